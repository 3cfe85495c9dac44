# The catalog and job queue: a managed Postgres (RDS) that refuses connections without TLS,
# encrypted, backed up, with its logs in CloudWatch; or an existing server given by URL.

locals {
  create = var.existing_url == null

  existing = local.create ? null : regex(
    "^postgres(?:ql)?://(?P<user>[^:/@]+):(?P<password>[^@]+)@(?P<host>[^:/@]+)(?::(?P<port>[0-9]+))?/(?P<database>[^/?]+)",
    var.existing_url
  )
}

resource "random_password" "owner" {
  count = local.create ? 1 : 0

  length = 40
  # Characters that need no escaping in a URL or a key=value connection string.
  special          = true
  override_special = "-_.~"
}

resource "aws_db_subnet_group" "catalog" {
  count = local.create ? 1 : 0

  name       = var.name
  subnet_ids = var.subnet_ids
  tags       = var.tags
}

resource "aws_security_group" "catalog" {
  count = local.create ? 1 : 0

  name        = "${var.name}-postgres"
  description = "Postgres of Glimpse: the workers and the edge connect"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "from_groups" {
  for_each = local.create ? toset(var.client_security_group_ids) : toset([])

  security_group_id            = aws_security_group.catalog[0].id
  description                  = "Postgres from a client group"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_vpc_security_group_ingress_rule" "from_networks" {
  for_each = local.create ? toset(var.client_cidr_blocks) : toset([])

  security_group_id = aws_security_group.catalog[0].id
  description       = "Postgres from a client network"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 5432
  to_port           = 5432
}

resource "aws_db_parameter_group" "catalog" {
  count = local.create ? 1 : 0

  name   = "${var.name}-postgres${var.engine_version}"
  family = "postgres${var.engine_version}"
  tags   = var.tags

  # Connections without TLS are refused.
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  # Slow statements (over a second) are logged.
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  parameter {
    name  = "log_connections"
    value = "1"
  }
}

data "aws_iam_policy_document" "monitoring_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "monitoring" {
  count = local.create ? 1 : 0

  name               = "${var.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.monitoring_trust.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "monitoring" {
  count = local.create ? 1 : 0

  role       = aws_iam_role.monitoring[0].name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "catalog" {
  count = local.create ? 1 : 0

  identifier     = var.name
  engine         = "postgres"
  engine_version = var.engine_version
  instance_class = var.instance_class

  db_name  = var.database_name
  username = var.username
  password = random_password.owner[0].result
  port     = 5432

  allocated_storage     = var.allocated_storage_gb
  max_allocated_storage = var.max_allocated_storage_gb
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = var.kms_key_arn

  db_subnet_group_name   = aws_db_subnet_group.catalog[0].name
  vpc_security_group_ids = [aws_security_group.catalog[0].id]
  parameter_group_name   = aws_db_parameter_group.catalog[0].name
  publicly_accessible    = false
  multi_az               = var.multi_az

  backup_retention_period   = var.backup_retention_days
  copy_tags_to_snapshot     = true
  deletion_protection       = var.deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.name}-final"

  auto_minor_version_upgrade          = true
  iam_database_authentication_enabled = true
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  performance_insights_enabled        = true
  performance_insights_kms_key_id     = var.kms_key_arn
  monitoring_interval                 = 60
  monitoring_role_arn                 = aws_iam_role.monitoring[0].arn

  tags = var.tags
}

locals {
  host     = local.create ? aws_db_instance.catalog[0].address : local.existing.host
  port     = local.create ? 5432 : coalesce(local.existing.port, "5432")
  database = local.create ? var.database_name : local.existing.database
  user     = local.create ? var.username : local.existing.user
  password = local.create ? random_password.owner[0].result : local.existing.password
}
