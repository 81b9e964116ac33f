"""neuron-contig device plugin (`neuron-device-plugin`): serves `aws.amazon.com/neuron`, `aws.amazon.com/neuroncore`
and the alias `aws.amazon.com/neurondevice` to kubelet, hands out only blocks the node's topology accepts, and
publishes the node's Neuron state for the scheduler extender.

Where each thing is handled: `main` (flags from `config`, wiring, SIGTERM; `entry` is the front it shares with
the DRA driver), `discovery` (devices, instance type,
topology), `lifecycle` (keep each resource registered: `registration`, `sockets`), `server` (the DevicePlugin
RPCs: GetDevicePluginOptions, ListAndWatch, GetPreferredAllocation, Allocate, PreStartContainer),
`allocation` (the decisions behind GetPreferredAllocation and Allocate, pure), `nodeview` (health, what pods
hold, grants kubelet has not reported yet), `podresources` (kubelet's PodResources client), `publisher`
(the `neuron-contig.io/` node annotations), `kubeapi` (the two API-server calls, standard library only),
`health` (device presence and kernel hardware errors: `hwerrors`, `ringbuffer`), `condition` (the
`NeuronDevicesHealthy` node condition), `serving` (whether kubelet can be served now, and why not),
`httpserve` (`/metrics`, `/healthz`, `/readyz`), `metrics`, `tally` (rate-limited repeated logs), `threads`
(blocking calls off the event loop) and `genproto` (regenerates `_proto`). `dra/` is the DRA driver
(`neuron-dra-driver`), on the same discovery, health and API client.
"""
