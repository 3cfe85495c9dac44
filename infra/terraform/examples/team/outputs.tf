output "url" {
  description = "The photo site."
  value       = module.edge.url
}

output "api_token" {
  description = "The API token (`terraform output -raw api_token`): paste it in the page to upload and, here, to see photos."
  value       = random_password.api_token.result
  sensitive   = true
}

output "pending_work_metric" {
  description = "The CloudWatch metric the GPU pool grows on."
  value       = module.gpu_pool.pending_work_metric
}
