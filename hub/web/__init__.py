"""The aiohttp web app: agent inbox, REST API, live websocket, OpenAPI document."""
