-- vpp-persistence schema, SQLite flavour. The PostgreSQL twin is migrations/postgres/0001_schema.sql;
-- both hold the same tables and columns, only the types are spelled per backend.
-- Conventions (both backends):
--   *_us          instants as integer microseconds since the Unix epoch, UTC
--   interval_us   a 15-minute delivery interval, by its UTC start in microseconds
--   decimals      (prices, quantities, money, shares) as TEXT: exact rust_decimal round trip
--   *_json        serde_json text; record_json holds the whole engine value (the authority),
--                 the other columns exist for filtering and joins
-- STRICT tables make SQLite refuse a value of the wrong type instead of coercing it.

-- ---------------------------------------------------------------- catalog
CREATE TABLE resource_templates (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    latest_version  INTEGER NOT NULL,
    updated_at_us   INTEGER NOT NULL
) STRICT;

CREATE TABLE template_versions (
    template_id     INTEGER NOT NULL REFERENCES resource_templates(id),
    version         INTEGER NOT NULL,
    record_json     TEXT    NOT NULL,
    created_at_us   INTEGER NOT NULL,
    PRIMARY KEY (template_id, version)
) STRICT;

CREATE TABLE resources (
    id               INTEGER PRIMARY KEY,
    name             TEXT    NOT NULL,
    template_id      INTEGER NOT NULL,
    template_version INTEGER NOT NULL,
    site             TEXT    NOT NULL,
    lifecycle        TEXT    NOT NULL,
    record_json      TEXT    NOT NULL,
    updated_at_us    INTEGER NOT NULL,
    FOREIGN KEY (template_id, template_version) REFERENCES template_versions(template_id, version)
) STRICT;
CREATE INDEX resources_by_template ON resources(template_id, template_version);

CREATE TABLE aggregations (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL,
    record_json     TEXT    NOT NULL,
    updated_at_us   INTEGER NOT NULL
) STRICT;

CREATE TABLE aggregation_members (
    aggregation_id  INTEGER NOT NULL REFERENCES aggregations(id),
    resource_id     INTEGER NOT NULL REFERENCES resources(id),
    share_pct       TEXT    NOT NULL,
    PRIMARY KEY (aggregation_id, resource_id)
) STRICT;
CREATE INDEX aggregation_members_by_resource ON aggregation_members(resource_id);

CREATE TABLE markets (
    id                          INTEGER PRIMARY KEY,
    name                        TEXT    NOT NULL,
    kind                        TEXT    NOT NULL,
    timezone                    TEXT    NOT NULL,
    price_cap_cny_per_mwh       TEXT    NOT NULL,
    price_floor_cny_per_mwh     TEXT    NOT NULL,
    negative_prices_allowed     INTEGER NOT NULL,
    gate_closure_minutes_before INTEGER NOT NULL
) STRICT;

CREATE TABLE strategies (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    enabled         INTEGER NOT NULL,
    latest_version  INTEGER NOT NULL,
    updated_at_us   INTEGER NOT NULL
) STRICT;

CREATE TABLE strategy_versions (
    strategy_id     INTEGER NOT NULL REFERENCES strategies(id),
    version         INTEGER NOT NULL,
    config_json     TEXT    NOT NULL,
    created_at_us   INTEGER NOT NULL,
    PRIMARY KEY (strategy_id, version)
) STRICT;

-- ---------------------------------------------------------------- order journal
-- The journal is the source of truth: replaying order_events in seq order through
-- OrderLedger::apply rebuilds orders and positions. orders, fills and positions are
-- projections written in the same transaction as the events that produced them.
CREATE TABLE order_events (
    seq             INTEGER PRIMARY KEY,
    client_order_id TEXT    NOT NULL,
    event           TEXT    NOT NULL,
    from_status     TEXT,
    to_status       TEXT,
    payload_json    TEXT    NOT NULL,
    at_us           INTEGER NOT NULL,
    error           TEXT
) STRICT;
CREATE INDEX order_events_by_order ON order_events(client_order_id, seq);

CREATE TABLE orders (
    client_order_id TEXT    PRIMARY KEY,
    strategy_id     INTEGER,
    aggregation_id  INTEGER NOT NULL,
    market_id       INTEGER NOT NULL,
    interval_us     INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    record_json     TEXT    NOT NULL,
    updated_at_us   INTEGER NOT NULL,
    last_event_seq  INTEGER NOT NULL
) STRICT;
CREATE INDEX orders_by_status ON orders(status);

CREATE TABLE fills (
    client_order_id   TEXT    NOT NULL,
    fill_id           INTEGER NOT NULL,
    aggregation_id    INTEGER NOT NULL,
    market_id         INTEGER NOT NULL,
    interval_us       INTEGER NOT NULL,
    product           TEXT    NOT NULL,
    side              TEXT    NOT NULL,
    quantity_mw       TEXT    NOT NULL,
    price_cny_per_mwh TEXT    NOT NULL,
    report_seq        INTEGER NOT NULL,
    at_us             INTEGER NOT NULL,
    event_seq         INTEGER NOT NULL,
    PRIMARY KEY (client_order_id, fill_id)
) STRICT;
CREATE INDEX fills_by_event_seq ON fills(event_seq);

CREATE TABLE positions (
    aggregation_id  INTEGER NOT NULL,
    market_id       INTEGER NOT NULL,
    interval_us     INTEGER NOT NULL,
    bought_mw       TEXT    NOT NULL,
    sold_mw         TEXT    NOT NULL,
    bought_value    TEXT    NOT NULL,
    sold_value      TEXT    NOT NULL,
    last_event_seq  INTEGER NOT NULL,
    PRIMARY KEY (aggregation_id, market_id, interval_us)
) STRICT;

-- ---------------------------------------------------------------- operations
CREATE TABLE dispatch_instructions (
    id              INTEGER PRIMARY KEY,
    at_us           INTEGER NOT NULL,
    aggregation_id  INTEGER NOT NULL,
    resource_id     INTEGER NOT NULL,
    interval_us     INTEGER,
    setpoint_kw     TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    detail_json     TEXT    NOT NULL
) STRICT;
CREATE INDEX dispatch_by_resource ON dispatch_instructions(resource_id, at_us);

-- Downsampled telemetry: one row per resource and bucket; the caller downsamples.
CREATE TABLE telemetry_samples (
    resource_id     INTEGER NOT NULL,
    bucket_start_us INTEGER NOT NULL,
    power_kw_avg    REAL    NOT NULL,
    power_kw_min    REAL    NOT NULL,
    power_kw_max    REAL    NOT NULL,
    soc_pct         REAL,
    available       INTEGER NOT NULL,
    samples         INTEGER NOT NULL,
    PRIMARY KEY (resource_id, bucket_start_us)
) STRICT;

CREATE TABLE settlement_records (
    id               INTEGER PRIMARY KEY,
    aggregation_id   INTEGER NOT NULL,
    market_id        INTEGER NOT NULL,
    trading_day      TEXT    NOT NULL,
    created_at_us    INTEGER NOT NULL,
    total_cny        TEXT    NOT NULL,
    detail_json      TEXT    NOT NULL
) STRICT;
CREATE INDEX settlement_by_day ON settlement_records(trading_day, aggregation_id);

CREATE TABLE settlement_lines (
    record_id         INTEGER NOT NULL REFERENCES settlement_records(id),
    line_no           INTEGER NOT NULL,
    kind              TEXT    NOT NULL,
    resource_id       INTEGER,
    interval_us       INTEGER,
    quantity_mwh      TEXT    NOT NULL,
    price_cny_per_mwh TEXT    NOT NULL,
    amount_cny        TEXT    NOT NULL,
    note              TEXT    NOT NULL,
    PRIMARY KEY (record_id, line_no)
) STRICT;

CREATE TABLE risk_events (
    id              INTEGER PRIMARY KEY,
    at_us           INTEGER NOT NULL,
    severity        TEXT    NOT NULL,
    rule            TEXT    NOT NULL,
    strategy_id     INTEGER,
    aggregation_id  INTEGER,
    client_order_id TEXT,
    message         TEXT    NOT NULL,
    detail_json     TEXT    NOT NULL
) STRICT;
CREATE INDEX risk_events_by_time ON risk_events(at_us);

CREATE TABLE audit_log (
    id              INTEGER PRIMARY KEY,
    at_us           INTEGER NOT NULL,
    actor           TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    target          TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    detail_json     TEXT    NOT NULL
) STRICT;
CREATE INDEX audit_log_by_time ON audit_log(at_us);

-- Only a hash of each token is stored; the plaintext is shown once, at creation, by the caller.
CREATE TABLE api_tokens (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    token_hash      TEXT    NOT NULL UNIQUE,
    created_at_us   INTEGER NOT NULL,
    expires_at_us   INTEGER,
    revoked_at_us   INTEGER
) STRICT;
