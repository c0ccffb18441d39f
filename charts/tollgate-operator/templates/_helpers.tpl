{{/* Names, labels and images shared by the templates of tollgate-operator. */}}

{{- define "tollgate-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: at most 52 characters, so suffixes like "-workloads" fit 63. */}}
{{- define "tollgate-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tollgate-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tollgate-operator.labels" -}}
helm.sh/chart: {{ include "tollgate-operator.chart" . }}
{{ include "tollgate-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: tollgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tollgate-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tollgate-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tollgate-operator.peeringName" -}}
{{- default (include "tollgate-operator.fullname" .) .Values.peering.name }}
{{- end }}

{{/* repository[:tag][@digest] of an image dict, the tag defaulting to the appVersion. */}}
{{- define "tollgate-operator.imageRef" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- $ref := printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- if $image.digest }}
{{- $ref = printf "%s@%s" $ref $image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{- define "tollgate-operator.image" -}}
{{- include "tollgate-operator.imageRef" (list .Values.image .) }}
{{- end }}

{{- define "tollgate-operator.workloadImage" -}}
{{- if .Values.workloadImage.repository }}
{{- include "tollgate-operator.imageRef" (list .Values.workloadImage .) }}
{{- else }}
{{- include "tollgate-operator.image" . }}
{{- end }}
{{- end }}

{{/* Namespaces that get a RoleBinding of the workloads ClusterRole. */}}
{{- define "tollgate-operator.tenantNamespaces" -}}
{{- $namespaces := .Values.rbac.tenantNamespaces | default .Values.watchNamespaces }}
{{- toJson (uniq $namespaces) }}
{{- end }}

{{/* The restricted Pod Security Standard, for the Pod and for each container. */}}
{{- define "tollgate-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "tollgate-operator.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
