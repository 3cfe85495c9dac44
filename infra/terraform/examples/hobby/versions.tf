terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.70, < 7.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.30"
    }
    qdrant-cloud = {
      source  = "qdrant/qdrant-cloud"
      version = ">= 1.3"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6"
    }
  }
}

provider "aws" {
  region = var.region
}

provider "kubernetes" {
  config_path    = var.kubeconfig
  config_context = var.kube_context
}

# Reads QDRANT_CLOUD_API_KEY and QDRANT_CLOUD_ACCOUNT_ID from the environment.
provider "qdrant-cloud" {}
