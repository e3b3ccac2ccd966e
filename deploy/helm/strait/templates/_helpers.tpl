{{/* The image every container runs: hub/image:tag. */}}
{{- define "strait.image" -}}
{{- printf "%s/%s:%s" .Values.hub .Values.image (.Values.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "strait.labels" -}}
app.kubernetes.io/name: strait
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "strait.agent" -}}{{ .Release.Name }}-agent{{- end -}}
{{- define "strait.ca" -}}{{ .Release.Name }}-ca{{- end -}}

{{/* Where agents find the CA: the CA Service, looked up in their own model. */}}
{{- define "strait.caAddress" -}}
{{- .Values.caAddress | default (printf "%s.%s.svc:15012" (include "strait.ca" .) .Release.Namespace) -}}
{{- end -}}

{{/* What agents and the CA read: the kinds the model is built from. */}}
{{- define "strait.readRules" -}}
- apiGroups: [""]
  resources: [namespaces, nodes, pods, services]
  verbs: [get, list, watch]
- apiGroups: [networking.istio.io, security.istio.io]
  resources: [destinationrules, serviceentries, workloadentries, workloadgroups, virtualservices, gateways, envoyfilters, authorizationpolicies, peerauthentications, requestauthentications]
  verbs: [get, list, watch]
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways, httproutes, grpcroutes]
  verbs: [get, list, watch]
{{- end -}}

{{/*
The ServiceAccount token and cluster CA a pod reads its API server with,
declared here rather than left to the ServiceAccount admission plugin, so
that exactly what the agent mounts is in the chart.
*/}}
{{- define "strait.kubeApiAccess" -}}
- name: kube-api-access
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                apiVersion: v1
                fieldPath: metadata.namespace
{{- end -}}
