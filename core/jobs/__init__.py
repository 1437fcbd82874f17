"""One queue for every long operation: jobs as rows in Postgres, run by workers in their own processes."""
