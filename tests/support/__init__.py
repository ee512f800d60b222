"""Test helpers: lake writers, services (MariaDB, moto S3), fault-injecting proxies."""
