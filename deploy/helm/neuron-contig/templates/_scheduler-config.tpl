{{/* The KubeSchedulerConfiguration; with default values it equals deploy/scheduler/kube-scheduler-config.yaml. */}}
{{- define "neuron-contig.schedulerConfig" -}}
# KubeSchedulerConfiguration for the second scheduler "{{ .Values.schedulerName }}".
# EKS does not allow extenders on its default scheduler, so pods opt in with spec.schedulerName.
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: true
  resourceNamespace: {{ .Release.Namespace }}
  resourceName: {{ .Values.schedulerName }}
profiles:
  # percentageOfNodesToScore stays at kube-scheduler's adaptive default: at 5,000 nodes the extender is asked
  # about at most 500 candidates per pod (README, extender "Benchmarks"). 100 weighs every node, at a cost.
  - schedulerName: {{ .Values.schedulerName }}
extenders:
  - urlPrefix: "{{ include "neuron-contig.extenderURL" . }}"
    {{- if .Values.scheduler.filterBest }}
    # One call in the scheduler's serial cycle: only the best-scoring nodes that fit pass (at most the
    # extender's --best-nodes), and the scheduler's own scores choose among them (docs/extender.md).
    filterVerb: filter-best
    {{- else }}
    filterVerb: filter
    prioritizeVerb: prioritize
    weight: {{ .Values.scheduler.extenderWeight }}
    {{- end }}
    # The extender binds so that it can re-check the block against fresh node state under a per-node lock:
    # two pods that passed filter for the same last block cannot both be bound (see README, "Why bind").
    bindVerb: bind
    # Filter at 5,000 nodes takes milliseconds; bind does two API calls. 5 s leaves room for a slow API server.
    httpTimeout: {{ .Values.scheduler.extenderTimeout }}
    nodeCacheCapable: true
    # A pod that needs a contiguous block must never be placed without the check.
    ignorable: false
    {{- if .Values.extender.tls.enabled }}
    # Mutual TLS (docs/security.md): the extender's certificate must chain to caFile and name the URL's host;
    # kube-scheduler presents certFile/keyFile, which the extender requires. client-go re-reads certFile and
    # keyFile at each new connection (cached for a second), so a renewed client certificate needs no restart;
    # caFile is read once, at start.
    enableHTTPS: true
    tlsConfig:
      certFile: /etc/neuron-contig/extender-client/tls.crt
      keyFile: /etc/neuron-contig/extender-client/tls.key
      caFile: /etc/neuron-contig/extender-client/ca.crt
    {{- else }}
    # extender.tls.enabled=false: plain HTTP, no client authentication (docs/security.md).
    enableHTTPS: false
    {{- end }}
    managedResources:
      - name: aws.amazon.com/neuron
        ignoredByScheduler: false
      - name: aws.amazon.com/neuroncore
        ignoredByScheduler: false
      # The alias of whole devices AWS's older device plugin served; pod specs of that era ask for it.
      - name: aws.amazon.com/neurondevice
        ignoredByScheduler: false
{{- end }}
