"""kubectl_neuron: the operator's view (`kubectl neuron`), read from the API server only.

`apiread` lists nodes, Pending pods and scheduling events; `view` turns them into per-node device maps with
`neuronalloc`'s decoder and block rules; `render` prints the table or JSON; `main` is the entry point.
"""
