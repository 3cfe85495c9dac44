# The edge: the Spin app (the repository's spin.toml, pushed as an OCI artifact) on SpinKube, as
# a SpinApp whose variables are the manifest's, secrets from a Kubernetes secret; and, given a
# host name, an Ingress with TLS.

locals {
  # Every variable of spin.toml, by its name there. tests/infra checks that these are exactly the
  # manifest's, and that the secret ones are the manifest's secrets.
  plain_variables = {
    protect_reads            = tostring(var.protect_reads)
    max_upload_mb            = tostring(var.max_upload_mb)
    max_staged_upload_mb     = tostring(var.max_staged_upload_mb)
    database_host            = var.database_host
    database_name            = var.database_name
    database_user            = var.database_user
    database_sslmode         = var.database_sslmode
    s3_endpoint              = var.s3_endpoint
    s3_bucket                = var.s3_bucket
    s3_region                = var.s3_region
    qdrant_url               = var.qdrant_url
    qdrant_collection_prefix = var.qdrant_collection_prefix
    worker_url               = var.worker_url
    rerank_url               = var.rerank_url
    rerank_budget_ms         = tostring(var.rerank_budget_ms)
  }

  secret_variables = {
    api_token            = var.api_token
    database_password    = var.database_password
    s3_access_key_id     = var.s3_access_key_id
    s3_secret_access_key = var.s3_secret_access_key
    qdrant_api_key       = var.qdrant_api_key
    worker_token         = var.worker_token
  }
}

resource "kubernetes_secret_v1" "variables" {
  metadata {
    name      = "${var.name}-variables"
    namespace = var.namespace
  }

  type = "Opaque"
  data = local.secret_variables
}

resource "kubernetes_manifest" "app" {
  manifest = {
    apiVersion = "core.spinkube.dev/v1alpha1"
    kind       = "SpinApp"

    metadata = {
      name      = var.name
      namespace = var.namespace
    }

    spec = merge(
      {
        image    = var.image
        executor = var.executor
        replicas = var.replicas
        variables = concat(
          [for name, value in local.plain_variables : { name = name, value = value }],
          [
            for name in sort(keys(local.secret_variables)) : {
              name = name
              valueFrom = {
                secretKeyRef = {
                  name     = kubernetes_secret_v1.variables.metadata[0].name
                  key      = name
                  optional = false
                }
              }
            }
          ],
        )
      },
      var.image_pull_secret == null ? {} : { imagePullSecrets = [{ name = var.image_pull_secret }] },
    )
  }
}

resource "kubernetes_ingress_v1" "app" {
  count = var.hostname == null ? 0 : 1

  metadata {
    name      = var.name
    namespace = var.namespace
    annotations = {
      "cert-manager.io/cluster-issuer"              = var.cluster_issuer
      "nginx.ingress.kubernetes.io/proxy-body-size" = "${var.max_body_mb}m"
    }
  }

  spec {
    ingress_class_name = var.ingress_class

    tls {
      hosts       = [var.hostname]
      secret_name = "${var.name}-tls"
    }

    rule {
      host = var.hostname

      http {
        path {
          path      = "/"
          path_type = "Prefix"

          backend {
            service {
              # SpinKube's operator names the app's Service after the SpinApp.
              name = var.name

              port {
                number = 80
              }
            }
          }
        }
      }
    }
  }

  depends_on = [kubernetes_manifest.app]
}
