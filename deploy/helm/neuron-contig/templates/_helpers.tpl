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

{{/* The DNS name the extender's certificate is for (the URL's host). */}}
{{- define "neuron-contig.extenderDNSName" -}}
neuron-scheduler-extender.{{ .Release.Namespace }}.svc
{{- end }}

{{/* Where the TLS certificates come from: off, cert-manager, chart or secrets ("auto" resolved here). */}}
{{- define "neuron-contig.tlsSource" -}}
{{- $tls := .Values.extender.tls -}}
{{- if not $tls.enabled -}}
off
{{- else if eq $tls.source "auto" -}}
{{- if .Capabilities.APIVersions.Has "cert-manager.io/v1" }}cert-manager{{ else }}chart{{ end -}}
{{- else -}}
{{ $tls.source }}
{{- end -}}
{{- end }}

{{/* The Secret with the extender's certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "neuron-contig.serverSecret" -}}
{{- if eq (include "neuron-contig.tlsSource" .) "secrets" -}}
{{ .Values.extender.tls.secretName }}
{{- else -}}
neuron-scheduler-extender-tls
{{- end -}}
{{- end }}

{{/* The Secret with kube-scheduler's client certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "neuron-contig.clientSecret" -}}
{{- if eq (include "neuron-contig.tlsSource" .) "secrets" -}}
{{ .Values.extender.tls.clientSecretName }}
{{- else -}}
neuron-contig-scheduler-client-tls
{{- end -}}
{{- end }}

{{/*
The chart-made certificates (tls source "chart"), as JSON of base64 PEM: ca, serverCert, serverKey,
clientCert, clientKey. The Secrets already in the cluster are reused when both exist and share their CA
(lookup), so an upgrade changes nothing; otherwise a new CA and both leaves are made. Made once per
rendering and kept in .Values, so that the Secrets and the pods' checksum/extender-ca annotations agree
although they are in different templates.
*/}}
{{- define "neuron-contig.chartTLS" -}}
{{- if not (hasKey .Values "_chartTLS") -}}
{{- $server := (lookup "v1" "Secret" .Release.Namespace "neuron-scheduler-extender-tls").data | default dict -}}
{{- $client := (lookup "v1" "Secret" .Release.Namespace "neuron-contig-scheduler-client-tls").data | default dict -}}
{{- $keys := list "ca.crt" "tls.crt" "tls.key" -}}
{{- $complete := true -}}
{{- range $keys -}}
{{- if not (and (index $server .) (index $client .)) -}}{{- $complete = false -}}{{- end -}}
{{- end -}}
{{- $tls := dict -}}
{{- if and $complete (eq (index $server "ca.crt") (index $client "ca.crt")) -}}
{{- $tls = dict "ca" (index $server "ca.crt") "serverCert" (index $server "tls.crt") "serverKey" (index $server "tls.key") "clientCert" (index $client "tls.crt") "clientKey" (index $client "tls.key") -}}
{{- else -}}
{{- /* ECDSA P-256 keys, as the cert-manager path issues them (deploy/extender/certificates.yaml). */ -}}
{{- $ca := genCAWithKey "neuron-contig-extender-ca" 3650 (genPrivateKey "ecdsa") -}}
{{- $dns := include "neuron-contig.extenderDNSName" . -}}
{{- $serverCert := genSignedCertWithKey $dns nil (list $dns) 3650 $ca (genPrivateKey "ecdsa") -}}
{{- $clientCert := genSignedCertWithKey "neuron-contig-scheduler" nil nil 3650 $ca (genPrivateKey "ecdsa") -}}
{{- $tls = dict "ca" ($ca.Cert | b64enc) "serverCert" ($serverCert.Cert | b64enc) "serverKey" ($serverCert.Key | b64enc) "clientCert" ($clientCert.Cert | b64enc) "clientKey" ($clientCert.Key | b64enc) -}}
{{- end -}}
{{- $_ := set .Values "_chartTLS" $tls -}}
{{- end -}}
{{- toJson .Values._chartTLS -}}
{{- end }}

{{/* Pod annotation that rolls the pods when the chart-made CA changes (kube-scheduler reads ca.crt only at start). */}}
{{- define "neuron-contig.caChecksum" -}}
{{- if eq (include "neuron-contig.tlsSource" .) "chart" -}}
checksum/extender-ca: {{ (include "neuron-contig.chartTLS" . | fromJson).ca | sha256sum }}
{{- end -}}
{{- end }}

{{/* Value checks JSON Schema cannot express. */}}
{{- define "neuron-contig.validate" -}}
{{- if eq (int .Values.extender.port) (int .Values.extender.metricsPort) -}}
{{- fail "extender.metricsPort must differ from extender.port: the metrics port is plain HTTP, the verbs port is not" -}}
{{- end -}}
{{- end }}

{{/* mode: which Neuron nodes' DaemonSets (and the device-plugin mode's scheduler side) this release installs.
A node labelled neuron-contig.io/mode=dra runs the DRA driver, any other the device plugin: never both. */}}
{{- define "neuron-contig.devicePluginMode" -}}
{{- if has .Values.mode (list "device-plugin" "both") }}true{{ end -}}
{{- end }}

{{- define "neuron-contig.draMode" -}}
{{- if has .Values.mode (list "dra" "both") }}true{{ end -}}
{{- end }}
