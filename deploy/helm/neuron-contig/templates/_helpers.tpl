{{/* Labels every object carries; "component" is device-plugin, scheduler-extender, scheduler or monitoring. */}}
{{- define "neuron-contig.labels" -}}
app.kubernetes.io/name: neuron-contig
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: neuron-contig
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{/* Pod template labels: stable across chart upgrades except for the version. */}}
{{- define "neuron-contig.podLabels" -}}
{{ include "neuron-contig.selectorLabels" . }}
app.kubernetes.io/part-of: neuron-contig
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{- end }}

{{/* Selectors never change after install (they are immutable on Deployments and DaemonSets). */}}
{{- define "neuron-contig.selectorLabels" -}}
app.kubernetes.io/name: neuron-contig
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "neuron-contig.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The extender's URL as the scheduler dials it: the Service name is fixed, the namespace is the release's. */}}
{{- define "neuron-contig.extenderURL" -}}
{{ if .Values.extender.tls.enabled }}https{{ else }}http{{ end }}://neuron-scheduler-extender.{{ .Release.Namespace }}.svc:{{ .Values.extender.port }}
{{- end }}

{{- define "neuron-contig.extenderScheme" -}}
{{ if .Values.extender.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}
