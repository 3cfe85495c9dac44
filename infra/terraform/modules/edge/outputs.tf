output "url" {
  description = "The app's public URL (null without hostname)."
  value       = var.hostname == null ? null : "https://${var.hostname}"
}

output "status_url" {
  description = "GET /api/status of the app: what the worker pool's scaler reads (null without hostname)."
  value       = var.hostname == null ? null : "https://${var.hostname}/api/status"
}

output "service" {
  description = "The in-cluster Service of the app (namespace/name, port 80)."
  value       = "${var.namespace}/${var.name}"
}
