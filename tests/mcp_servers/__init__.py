"""Small MCP servers written with the official SDK's FastMCP, for the tests (tests/system/test_mcp_tools.py)."""
