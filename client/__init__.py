"""Python SDK (client.sdk.ClipmatchClient) and the `clipmatch` command line (client.cli)."""
