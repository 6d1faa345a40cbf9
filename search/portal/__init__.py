"""The staff web portal: server-rendered pages over the same services as the API."""
