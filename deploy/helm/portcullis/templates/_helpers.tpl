{{- define "portcullis.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "portcullis.labels" -}}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "portcullis.secretName" -}}
{{- if .Values.secrets.create -}}
{{- include "portcullis.fullname" . -}}
{{- else -}}
{{- required "secrets.existingSecret is required when secrets.create is false" .Values.secrets.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.adminScheme" -}}
{{- if .Values.tls.secretName -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}

{{/* The gateway's configuration file. */}}
{{- define "portcullis.config" -}}
# Rendered by the portcullis chart (docs/configuration.md).
listen = "0.0.0.0:6432"
policy = "policy.toml"
mode = {{ .Values.mode | quote }}
{{- if .Values.tls.secretName }}

[tls]
cert = "/etc/portcullis/tls/tls.crt"
key = "/etc/portcullis/tls/tls.key"
{{- end }}

[auth]
jwks_url = {{ required "auth.jwksUrl is required" .Values.auth.jwksUrl | quote }}
jwks_max_age = {{ .Values.auth.jwksMaxAge | quote }}
allow_cleartext_without_tls = {{ .Values.allowCleartextWithoutTls }}

[upstream]
host = {{ required "upstream.host is required" .Values.upstream.host | quote }}
port = {{ .Values.upstream.port }}
user = {{ .Values.upstream.user | quote }}
database = {{ .Values.upstream.database | quote }}
password_file = "/etc/portcullis/secrets/upstream-password"
tls = {{ .Values.upstream.tls | quote }}
{{- if .Values.upstream.caSecret.name }}
ca_file = "/etc/portcullis/upstream-ca/ca.crt"
{{- else if has .Values.upstream.tls (list "verify-ca" "verify-full") }}
ca_file = "system"
{{- end }}

[limits]
max_connections = {{ .Values.limits.maxConnections }}
{{- if .Values.secrets.pseudonymKey }}

[masking]
pseudonym_key_file = "/etc/portcullis/secrets/pseudonym-key"
{{- end }}
{{- if .Values.audit.enabled }}

[audit]
dir = "/var/lib/portcullis/audit"
signing_key_file = "/etc/portcullis/secrets/audit-key.pem"
durability = {{ .Values.audit.durability | quote }}
keep = {{ .Values.audit.keep | quote }}
{{- end }}

[admin]
listen = "0.0.0.0:{{ .Values.admin.port }}"
{{- if .Values.admin.url }}
url = {{ .Values.admin.url | quote }}
{{- else }}
url = "{{ include "portcullis.adminScheme" . | lower }}://{{ include "portcullis.fullname" . }}-admin.{{ .Release.Namespace }}.svc:{{ .Values.admin.port }}/"
{{- end }}
operators = {{ .Values.admin.operators | toJson }}

[approvals]
timeout = {{ .Values.approvals.timeout | quote }}
max_grant = {{ .Values.approvals.maxGrant | quote }}
store = {{ .Values.approvals.store | quote }}
{{- if eq .Values.approvals.store "postgres" }}
user = {{ .Values.approvals.logUser | quote }}
password_file = "/etc/portcullis/secrets/log-password"
{{- end }}
{{- end -}}
