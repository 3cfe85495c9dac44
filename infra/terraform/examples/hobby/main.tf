# Glimpse for one household: the GPU pool sleeps at 0 and wakes when photos wait; a small CPU
# worker that never sleeps embeds query text, so searching works while the GPU sleeps.

resource "random_password" "api_token" {
  length  = 48
  special = false
}

resource "random_password" "worker_token" {
  length  = 48
  special = false
}

module "storage" {
  source = "../../modules/storage"

  bucket_name = "${var.name}-originals-${data.aws_caller_identity.current.account_id}"
  web_origins = ["https://${var.hostname}"]
}

data "aws_caller_identity" "current" {}

module "database" {
  source = "../../modules/database"

  name                      = var.name
  vpc_id                    = var.vpc_id
  subnet_ids                = var.private_subnet_ids
  client_security_group_ids = concat(var.edge_security_group_ids, [module.gpu_pool.security_group_id])
}

module "qdrant" {
  source = "../../modules/qdrant"

  name             = var.name
  cloud_region     = var.region
  package_id       = var.qdrant_package_id
  existing_url     = var.qdrant_url
  existing_api_key = var.qdrant_api_key
}

module "gpu_pool" {
  source = "../../modules/gpu_worker"

  name           = "${var.name}-gpu"
  vpc_id         = var.vpc_id
  subnet_ids     = var.private_subnet_ids
  image_id       = var.gpu_image_id
  instance_type  = "g5.xlarge"
  release_url    = var.cuda_release_url
  release_sha256 = var.cuda_release_sha256
  min_size       = 0
  max_size       = 1
  # The edge never calls it: the query worker embeds query text.
  load_balancer = false

  status_url = module.edge.status_url
  api_token  = random_password.api_token.result

  worker_token           = random_password.worker_token.result
  database_url           = module.database.url
  database_ca_bundle_url = module.database.ca_bundle
  s3_bucket              = module.storage.bucket
  s3_region              = module.storage.region
  s3_access_key_id       = module.storage.worker_access_key_id
  s3_secret_access_key   = module.storage.worker_secret_access_key
  qdrant_url             = module.qdrant.grpc_url
  qdrant_api_key         = module.qdrant.api_key
}

module "query_worker" {
  source = "../../modules/gpu_worker"

  name           = "${var.name}-query"
  vpc_id         = var.vpc_id
  subnet_ids     = var.private_subnet_ids
  image_id       = var.cpu_image_id
  instance_type  = "t3.small"
  volume_gb      = 20
  release_url    = var.cpu_release_url
  release_sha256 = var.cpu_release_sha256
  min_size       = 1
  max_size       = 1
  consume_jobs   = false
  # A small machine decodes no images: it only embeds query text.
  decode_memory_mb      = 256
  scale_on_pending_work = false

  client_security_group_ids = var.edge_security_group_ids
  worker_token              = random_password.worker_token.result
}

module "edge" {
  source = "../../modules/edge"

  name     = var.name
  image    = var.image
  hostname = var.hostname
  replicas = 1

  api_token                = random_password.api_token.result
  database_host            = module.database.address
  database_name            = module.database.database
  database_user            = module.database.username
  database_password        = module.database.password
  s3_endpoint              = module.storage.endpoint
  s3_bucket                = module.storage.bucket
  s3_region                = module.storage.region
  s3_access_key_id         = module.storage.edge_access_key_id
  s3_secret_access_key     = module.storage.edge_secret_access_key
  qdrant_url               = module.qdrant.rest_url
  qdrant_api_key           = module.qdrant.api_key
  qdrant_collection_prefix = "glimpse"
  worker_url               = module.query_worker.worker_url
  rerank_url               = module.query_worker.worker_url
  worker_token             = random_password.worker_token.result
}
