terraform {
  required_version = ">= 1.6"

  required_providers {
    qdrant-cloud = {
      source  = "qdrant/qdrant-cloud"
      version = ">= 1.3"
    }
  }
}
