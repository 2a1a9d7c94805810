"""Ordered schema migrations, one list for both SQL dialects.

A migration is applied once, in order, inside the transaction that bumps
``schema_version``.  Never edit a released migration: append a new one.
``{real}`` and ``{blob}`` are filled in per dialect.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "render"]

MIGRATIONS: list[list[str]] = [
    # 1: functions, invocations + async queue, tokens
    [
        """CREATE TABLE functions (
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            digest TEXT NOT NULL,
            spec TEXT NOT NULL,
            created_at {real} NOT NULL,
            PRIMARY KEY (name, version))""",
        """CREATE TABLE invocations (
            id TEXT PRIMARY KEY,
            function TEXT NOT NULL,
            status TEXT NOT NULL,
            mode TEXT NOT NULL,
            content_type TEXT NOT NULL,
            payload {blob} NOT NULL,
            output {blob} NOT NULL,
            output_type TEXT NOT NULL,
            error TEXT,
            logs TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            idempotency_key TEXT,
            infra TEXT NOT NULL,
            created_at {real} NOT NULL,
            started_at {real},
            finished_at {real},
            not_before {real} NOT NULL,
            duration_ms {real},
            cold INTEGER NOT NULL DEFAULT 0,
            lease_until {real},
            owner TEXT)""",
        # partial: sync invocations (no key) do not pay for this index
        "CREATE UNIQUE INDEX invocations_idempotency ON invocations (function, idempotency_key) "
        "WHERE idempotency_key IS NOT NULL",
        "CREATE INDEX invocations_by_function ON invocations (function, created_at)",
        "CREATE INDEX invocations_by_time ON invocations (created_at)",
        "CREATE INDEX invocations_queued ON invocations (not_before) WHERE status = 'queued'",
        "CREATE INDEX invocations_running ON invocations (lease_until) WHERE status = 'running'",
        """CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            scopes TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            created_at {real} NOT NULL)""",
    ],
    # 2: events: the event an invocation came from, triggers added through the API,
    # (source, id) pairs seen (de-duplication), fired schedule ticks, dead letters
    [
        "ALTER TABLE invocations ADD COLUMN event TEXT",
        """CREATE TABLE triggers (
            id TEXT PRIMARY KEY,
            function TEXT NOT NULL,
            spec TEXT NOT NULL,
            created_at {real} NOT NULL)""",
        "CREATE INDEX triggers_by_function ON triggers (function)",
        """CREATE TABLE events_seen (
            source TEXT NOT NULL,
            id TEXT NOT NULL,
            seen_at {real} NOT NULL,
            PRIMARY KEY (source, id))""",
        "CREATE INDEX events_seen_by_time ON events_seen (seen_at)",
        """CREATE TABLE schedule_ticks (
            key TEXT PRIMARY KEY,
            last_tick {real} NOT NULL)""",
        """CREATE TABLE dead_letters (
            id TEXT PRIMARY KEY,
            function TEXT NOT NULL,
            event TEXT NOT NULL,
            content_type TEXT NOT NULL,
            payload {blob} NOT NULL,
            error TEXT,
            attempts INTEGER NOT NULL,
            created_at {real} NOT NULL,
            failed_at {real} NOT NULL)""",
        "CREATE INDEX dead_letters_by_time ON dead_letters (failed_at)",
    ],
    # 3: images: curated package lists, their audit trail, the image policy,
    # built images and which function bundles run on them
    [
        """CREATE TABLE image_lists (
            name TEXT PRIMARY KEY,
            note TEXT NOT NULL,
            owner TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL)""",
        """CREATE TABLE image_packages (
            list TEXT NOT NULL REFERENCES image_lists (name) ON DELETE CASCADE,
            name TEXT NOT NULL,
            specifier TEXT NOT NULL,
            note TEXT NOT NULL,
            added_by TEXT NOT NULL,
            added_at {real} NOT NULL,
            PRIMARY KEY (list, name))""",
        """CREATE TABLE image_audit (
            id TEXT PRIMARY KEY,
            at {real} NOT NULL,
            actor TEXT NOT NULL,
            actor_id TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL)""",
        "CREATE INDEX image_audit_by_time ON image_audit (at)",
        """CREATE TABLE image_settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL)""",
        """CREATE TABLE images (
            id TEXT PRIMARY KEY,
            python TEXT NOT NULL,
            lock TEXT NOT NULL,
            packages TEXT NOT NULL,
            request TEXT NOT NULL,
            size INTEGER NOT NULL,
            built_by TEXT NOT NULL,
            build_seconds {real} NOT NULL,
            created_at {real} NOT NULL,
            last_used_at {real} NOT NULL,
            reuses INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE image_uses (
            function TEXT NOT NULL,
            digest TEXT NOT NULL,
            image TEXT NOT NULL,
            at {real} NOT NULL,
            PRIMARY KEY (function, digest))""",
        "CREATE INDEX image_uses_by_image ON image_uses (image)",
    ],
    # 4: runs of an async invocation started again because an earlier start left no
    # outcome (its gateway died): counted apart from the retries of failed runs
    [
        "ALTER TABLE invocations ADD COLUMN reruns INTEGER NOT NULL DEFAULT 0",
    ],
    # 5: generations: a number per kind of shared state, bumped in the transaction of
    # every change to it ('functions': each put_function and delete_function), which
    # the gateways sharing a store watch to see one another's deploys and removes
    [
        """CREATE TABLE generations (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL)""",
        "INSERT INTO generations (name, value) VALUES ('functions', 0)",
    ],
    # 6: the function bundles themselves, content-addressed (sha256 of the bytes), so a
    # gateway with its own data dir deploys a version another gateway stored; a blob is
    # kept while a stored version refers to it (``functions.digest``)
    [
        """CREATE TABLE blobs (
            digest TEXT PRIMARY KEY,
            data {blob} NOT NULL,
            size INTEGER NOT NULL,
            created_at {real} NOT NULL)""",
        "CREATE INDEX functions_by_digest ON functions (digest)",
    ],
    # 7: the Redis consumer groups the event readers have had (key: server|stream|group), so a
    # group found missing at start (Redis restarted without its data) is made again from the
    # stream's start, not taken for a new one
    [
        """CREATE TABLE stream_groups (
            key TEXT PRIMARY KEY,
            seen_at {real} NOT NULL)""",
    ],
    # 8: removes a site still owes: a function removed (or moved away by a new version's
    # policy) while the site was down or failed the remove; done by whichever gateway finds
    # the site up first, and forgotten once the site confirms it or the function is wanted there again
    [
        """CREATE TABLE owed_removes (
            site TEXT NOT NULL,
            function TEXT NOT NULL,
            since {real} NOT NULL,
            PRIMARY KEY (site, function))""",
    ],
    # 9: a site's record of a call another gateway placed on it keeps that gateway's id
    # of the invocation (the function's context.invocation_id there), so the two join
    [
        "ALTER TABLE invocations ADD COLUMN origin TEXT NOT NULL DEFAULT ''",
    ],
    # 10: whether the run of a claim really started (1), or the record only waited (in the
    # function's queue, for a deploy) while claimed (0: what a claim sets): a gateway that dies
    # leaves the first a re-run (``reruns`` + 1) and gives the second back as no run
    # (``reclaims`` + 1, ``attempts`` - 1).  A record an older gateway left 'running' is
    # taken for started: it may have been.
    [
        "ALTER TABLE invocations ADD COLUMN started INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE invocations ADD COLUMN reclaims INTEGER NOT NULL DEFAULT 0",
    ],
    # 11: the infrastructures a call was tried on before the one that ran it (a JSON list of
    # "name: why"): a site that stopped answering may have run it too, and the caller is told
    [
        "ALTER TABLE invocations ADD COLUMN tried TEXT NOT NULL DEFAULT '[]'",
    ],
    # 12: whether a deploy has used an image (1) or only a build request made or found it (0):
    # a build followed by its deploy (`spanfaas deploy`) is one use, so only a deploy after a
    # deploy counts a reuse.  Images recorded before were used, as far as anyone can tell.
    [
        "ALTER TABLE images ADD COLUMN deployed INTEGER NOT NULL DEFAULT 1",
    ],
]


def render(statement: str, *, real: str, blob: str) -> str:
    return statement.replace("{real}", real).replace("{blob}", blob)
