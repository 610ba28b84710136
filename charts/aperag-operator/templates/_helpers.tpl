{{/* The chart's name (nameOverride replaces it). */}}
{{- define "aperag-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object: the release name when it contains the chart's name ("aperag-operator"),
else <release>-<chart>; fullnameOverride replaces it. Cluster-scoped objects (ClusterRole and its
binding) carry it too, so two releases never share one.
*/}}
{{- define "aperag-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aperag-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aperag-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aperag-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aperag-operator.labels" -}}
helm.sh/chart: {{ include "aperag-operator.chart" . }}
{{ include "aperag-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: aperag
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "aperag-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aperag-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository:tag, the tag defaulting to the chart's appVersion; a digest wins. */}}
{{- define "aperag-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The operator's arguments. watchNamespaces empty: --all-namespaces (and a ClusterRole); otherwise one
--namespace per entry (and a Role in each). The health server (/healthz, /readyz; /metrics later) listens
on every interface of the pod, so the kubelet and Prometheus reach it.
*/}}
{{- define "aperag-operator.args" -}}
- run
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- else }}
- --all-namespaces
{{- end }}
- --liveness=http://0.0.0.0:{{ .Values.healthPort }}/healthz
- --log-level={{ .Values.logLevel }}
- --log-format={{ .Values.logFormat }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
