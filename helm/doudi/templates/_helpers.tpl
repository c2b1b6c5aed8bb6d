{{/* Names and labels. */}}
{{- define "doudi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "doudi.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "doudi.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "doudi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: doudi
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "lag-exporter"). */}}
{{- define "doudi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "doudi.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "doudi.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "doudi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "doudi.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "doudi.secretName" -}}
{{ include "doudi.fullname" . }}-secrets
{{- end -}}

{{/* Environment every doudi container gets: the settings file and the secrets. */}}
{{- define "doudi.env" -}}
- name: DOUDI_CONFIG
  value: /etc/doudi/settings/doudi.toml
- name: DOUDI_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.database.existingSecret | default (include "doudi.secretName" .) }}
      key: {{ .Values.secrets.database.key }}
- name: DOUDI_KEYS_HMAC_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.hmac.existingSecret | default (include "doudi.secretName" .) }}
      key: {{ .Values.secrets.hmac.key }}
- name: DOUDI_KEYS_AUDIT_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.audit.existingSecret | default (include "doudi.secretName" .) }}
      key: {{ .Values.secrets.audit.key }}
{{- end -}}

{{- define "doudi.volumeMounts" -}}
- name: settings
  mountPath: /etc/doudi/settings
  readOnly: true
- name: connectors
  mountPath: /etc/doudi/connectors
  readOnly: true
- name: policy
  mountPath: /etc/doudi/policy
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.secrets.kafkaTls.enabled }}
- name: kafka-tls
  mountPath: /etc/doudi/kafka-tls
  readOnly: true
{{- end }}
{{- if .Values.secrets.database.caSecret }}
- name: pg-ca
  mountPath: /etc/doudi/pg-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "doudi.volumes" -}}
- name: settings
  configMap:
    name: {{ include "doudi.fullname" . }}-settings
- name: connectors
  configMap:
    name: {{ include "doudi.fullname" . }}-connectors
- name: policy
  configMap:
    name: {{ include "doudi.fullname" . }}-policy
- name: tmp
  emptyDir: {}
{{- if .Values.secrets.kafkaTls.enabled }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.secrets.kafkaTls.existingSecret | default (printf "%s-kafka-tls" (include "doudi.fullname" .)) }}
{{- end }}
{{- if .Values.secrets.database.caSecret }}
- name: pg-ca
  secret:
    secretName: {{ .Values.secrets.database.caSecret }}
    items:
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every Deployment. */}}
{{- define "doudi.podCommon" -}}
serviceAccountName: {{ include "doudi.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "doudi.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: ops}
  periodSeconds: 20
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: ops}
  periodSeconds: 10
  failureThreshold: 3
startupProbe:
  httpGet: {path: /healthz, port: ops}
  periodSeconds: 5
  failureThreshold: 60
{{- end -}}

{{/* One component's Kafka credentials, as the principal `doudi acl plan` names it
     (docs/security.md), from a Secret of its own: no pod holds another's. Called with
     (dict "root" $ "principal" "doudi-matcher").
     SASL: the principal is the username; the password is key passwordKey of <secretPrefix><principal>.
     Mutual TLS: the certificate (CN = the principal) and key from <secretPrefix><principal>. */}}
{{- define "doudi.kafkaEnv" -}}
{{- $sasl := .root.Values.secrets.kafkaSasl -}}
{{- if $sasl.enabled }}
- name: DOUDI_KAFKA_OPTIONS_SASL_USERNAME
  value: {{ .principal | quote }}
- name: DOUDI_KAFKA_OPTIONS_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ printf "%s%s" $sasl.secretPrefix .principal }}
      key: {{ $sasl.passwordKey }}
{{- end }}
{{- end -}}

{{- define "doudi.kafkaMounts" -}}
{{- $tls := .root.Values.secrets.kafkaTls -}}
{{- if and $tls.enabled $tls.mutual }}
- name: kafka-client
  mountPath: /etc/doudi/kafka-client
  readOnly: true
{{- end }}
{{- end -}}

{{- define "doudi.kafkaVolumes" -}}
{{- $tls := .root.Values.secrets.kafkaTls -}}
{{- if and $tls.enabled $tls.mutual }}
- name: kafka-client
  secret:
    secretName: {{ printf "%s%s" $tls.secretPrefix .principal }}
    items:
      - {key: {{ $tls.certKey }}, path: tls.crt}
      - {key: {{ $tls.keyKey }}, path: tls.key}
{{- end }}
{{- end -}}

{{/* HTTPS on a data endpoint (HTTP push, the acknowledgement callback) with the certificate of a
     kubernetes.io/tls Secret. Called with (dict "secret" NAME); nothing when NAME is empty. */}}
{{- define "doudi.httpsEnv" -}}
{{- if .secret }}
- name: DOUDI_HTTP_TLS_CERT
  value: /etc/doudi/https/tls.crt
- name: DOUDI_HTTP_TLS_KEY
  value: /etc/doudi/https/tls.key
{{- end }}
{{- end -}}

{{- define "doudi.httpsMounts" -}}
{{- if .secret }}
- name: https
  mountPath: /etc/doudi/https
  readOnly: true
{{- end }}
{{- end -}}

{{- define "doudi.httpsVolumes" -}}
{{- if .secret }}
- name: https
  secret:
    secretName: {{ .secret }}
{{- end }}
{{- end -}}
