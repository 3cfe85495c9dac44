# The vector index: a Qdrant Cloud cluster with a database API key for Glimpse, or an existing
# server given by URL and key. The edge talks REST (6333), the workers gRPC (6334).

locals {
  create = var.existing_url == null
}

resource "qdrant-cloud_accounts_cluster" "index" {
  count = local.create ? 1 : 0

  name           = var.name
  cloud_provider = var.cloud_provider
  cloud_region   = var.cloud_region

  configuration {
    number_of_nodes = var.nodes

    node_configuration {
      package_id = var.package_id
    }
  }

  lifecycle {
    precondition {
      condition     = var.package_id != null
      error_message = "Creating a cluster needs package_id (or pass existing_url and existing_api_key)."
    }
  }
}

resource "qdrant-cloud_accounts_database_api_key_v2" "glimpse" {
  count = local.create ? 1 : 0

  cluster_id = qdrant-cloud_accounts_cluster.index[0].id
  name       = "${var.name}-glimpse"
}

locals {
  base_url = local.create ? trimsuffix(qdrant-cloud_accounts_cluster.index[0].url, "/") : var.existing_url
  api_key  = local.create ? qdrant-cloud_accounts_database_api_key_v2.glimpse[0].key : var.existing_api_key
}
