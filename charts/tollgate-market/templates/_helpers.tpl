{{/* Names and labels shared by the templates of tollgate-market. */}}

{{- define "tollgate-market.tenantName" -}}
{{- $name := default .Release.Name .Values.tenant.name }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $name) }}
{{- fail (printf "tenant.name (or the release name) %q must be a DNS label: lower-case letters, digits and '-'" $name) }}
{{- end }}
{{- $name | trunc 63 }}
{{- end }}

{{- define "tollgate-market.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate-market.labels" -}}
helm.sh/chart: {{ include "tollgate-market.chart" . }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tollgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
tollgate.dev/tenant: {{ include "tollgate-market.tenantName" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Metadata of one catalog resource: (list $root $name $entry $component).
*/}}
{{- define "tollgate-market.metadata" -}}
{{- $root := index . 0 }}
{{- $entry := index . 2 -}}
name: {{ index . 1 }}
namespace: {{ $root.Release.Namespace }}
labels:
  {{- include "tollgate-market.labels" $root | nindent 2 }}
  app.kubernetes.io/component: {{ index . 3 }}
  {{- with $entry.labels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $entry.annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A spec with tenantRef defaulted to this release's Tenant. */}}
{{- define "tollgate-market.specWithTenant" -}}
{{- $root := index . 0 }}
{{- $spec := deepCopy (index . 1 | default dict) }}
{{- if not (hasKey $spec "tenantRef") }}
{{- $_ := set $spec "tenantRef" (dict "name" (include "tollgate-market.tenantName" $root)) }}
{{- end }}
{{- toYaml $spec }}
{{- end }}

{{/* The restricted Pod Security Standard, for the Pod and for each container. */}}
{{- define "tollgate-market.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "tollgate-market.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
