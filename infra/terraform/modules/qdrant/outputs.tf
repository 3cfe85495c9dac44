output "rest_url" {
  description = "The REST API (port 6333), as the edge's qdrant_url wants it."
  value       = "${local.base_url}:6333"
}

output "grpc_url" {
  description = "The gRPC API (port 6334), as the workers' [qdrant] url wants it."
  value       = "${local.base_url}:6334"
}

output "api_key" {
  description = "The database API key Glimpse uses."
  value       = local.api_key
  sensitive   = true
}
