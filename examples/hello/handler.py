"""Greets whoever is named in the event: {"name": "Ada"} -> {"message": "hello, Ada"}."""


def handler(event, context):
    name = (event or {}).get("name", "world") if isinstance(event, dict) else "world"
    context.logger.info("greeting %s", name)
    return {"message": f"hello, {name}"}
