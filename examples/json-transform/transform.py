"""Group records by a key and aggregate a numeric field.

Event::

    {"records": [{"region": "eu", "amount": 12.5}, ...],
     "group_by": "region", "field": "amount"}

Result: one entry per group, sorted by total, largest first::

    {"groups": [{"region": "eu", "count": 2, "total": 20.0, "mean": 10.0,
                 "min": 7.5, "max": 12.5}, ...],
     "records": 3, "skipped": 0}
"""

from collections import defaultdict


def handler(event, context):
    if not isinstance(event, dict) or not isinstance(event.get("records"), list):
        raise ValueError('expected {"records": [...], "group_by": "...", "field": "..."}')
    key = event.get("group_by", "category")
    field = event.get("field", "amount")
    values = defaultdict(list)
    skipped = 0
    for record in event["records"]:
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            skipped += 1
            continue
        values[str(record.get(key, "(none)"))].append(float(value))
    groups = [
        {key: group, "count": len(vs), "total": sum(vs), "mean": sum(vs) / len(vs), "min": min(vs), "max": max(vs)}
        for group, vs in values.items()
    ]
    groups.sort(key=lambda g: g["total"], reverse=True)
    if skipped:
        context.logger.warning("skipped %d records without a numeric %r", skipped, field)
    return {"groups": groups, "records": len(event["records"]), "skipped": skipped}
