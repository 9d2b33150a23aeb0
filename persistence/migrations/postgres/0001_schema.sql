-- vpp-persistence schema, PostgreSQL flavour. The SQLite twin is migrations/sqlite/0001_schema.sql;
-- both hold the same tables and columns, only the types are spelled per backend.
-- Conventions (both backends):
--   *_us          instants as integer microseconds since the Unix epoch, UTC
--   interval_us   a 15-minute delivery interval, by its UTC start in microseconds
--   decimals      (prices, quantities, money, shares) as TEXT: exact rust_decimal round trip
--   *_json        serde_json text; record_json holds the whole engine value (the authority),
--                 the other columns exist for filtering and joins
-- Integers are BIGINT (Rust i64). Catalog ids are assigned by the caller; log-like tables
-- (dispatch, settlement, risk, audit, tokens) get identity ids.

-- ---------------------------------------------------------------- catalog
CREATE TABLE resource_templates (
    id              BIGINT PRIMARY KEY,
    name            TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    latest_version  BIGINT NOT NULL,
    updated_at_us   BIGINT NOT NULL
);

CREATE TABLE template_versions (
    template_id     BIGINT NOT NULL REFERENCES resource_templates(id),
    version         BIGINT NOT NULL,
    record_json     TEXT    NOT NULL,
    created_at_us   BIGINT NOT NULL,
    PRIMARY KEY (template_id, version)
);

CREATE TABLE resources (
    id               BIGINT PRIMARY KEY,
    name             TEXT    NOT NULL,
    template_id      BIGINT NOT NULL,
    template_version BIGINT NOT NULL,
    site             TEXT    NOT NULL,
    lifecycle        TEXT    NOT NULL,
    record_json      TEXT    NOT NULL,
    updated_at_us    BIGINT NOT NULL,
    FOREIGN KEY (template_id, template_version) REFERENCES template_versions(template_id, version)
);
CREATE INDEX resources_by_template ON resources(template_id, template_version);

CREATE TABLE aggregations (
    id              BIGINT PRIMARY KEY,
    name            TEXT    NOT NULL,
    record_json     TEXT    NOT NULL,
    updated_at_us   BIGINT NOT NULL
);

CREATE TABLE aggregation_members (
    aggregation_id  BIGINT NOT NULL REFERENCES aggregations(id),
    resource_id     BIGINT NOT NULL REFERENCES resources(id),
    share_pct       TEXT    NOT NULL,
    PRIMARY KEY (aggregation_id, resource_id)
);
CREATE INDEX aggregation_members_by_resource ON aggregation_members(resource_id);

CREATE TABLE markets (
    id                          BIGINT PRIMARY KEY,
    name                        TEXT    NOT NULL,
    kind                        TEXT    NOT NULL,
    timezone                    TEXT    NOT NULL,
    price_cap_cny_per_mwh       TEXT    NOT NULL,
    price_floor_cny_per_mwh     TEXT    NOT NULL,
    negative_prices_allowed     BOOLEAN NOT NULL,
    gate_closure_minutes_before BIGINT NOT NULL
);

CREATE TABLE strategies (
    id              BIGINT PRIMARY KEY,
    name            TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    enabled         BOOLEAN NOT NULL,
    latest_version  BIGINT NOT NULL,
    updated_at_us   BIGINT NOT NULL
);

CREATE TABLE strategy_versions (
    strategy_id     BIGINT NOT NULL REFERENCES strategies(id),
    version         BIGINT NOT NULL,
    config_json     TEXT    NOT NULL,
    created_at_us   BIGINT NOT NULL,
    PRIMARY KEY (strategy_id, version)
);

-- ---------------------------------------------------------------- order journal
-- The journal is the source of truth: replaying order_events in seq order through
-- OrderLedger::apply rebuilds orders and positions. orders, fills and positions are
-- projections written in the same transaction as the events that produced them.
CREATE TABLE order_events (
    seq             BIGINT PRIMARY KEY,
    client_order_id TEXT    NOT NULL,
    event           TEXT    NOT NULL,
    from_status     TEXT,
    to_status       TEXT,
    payload_json    TEXT    NOT NULL,
    at_us           BIGINT NOT NULL,
    error           TEXT
);
CREATE INDEX order_events_by_order ON order_events(client_order_id, seq);

CREATE TABLE orders (
    client_order_id TEXT    PRIMARY KEY,
    strategy_id     BIGINT,
    aggregation_id  BIGINT NOT NULL,
    market_id       BIGINT NOT NULL,
    interval_us     BIGINT NOT NULL,
    status          TEXT    NOT NULL,
    record_json     TEXT    NOT NULL,
    updated_at_us   BIGINT NOT NULL,
    last_event_seq  BIGINT NOT NULL
);
CREATE INDEX orders_by_status ON orders(status);

CREATE TABLE fills (
    client_order_id   TEXT    NOT NULL,
    fill_id           BIGINT NOT NULL,
    aggregation_id    BIGINT NOT NULL,
    market_id         BIGINT NOT NULL,
    interval_us       BIGINT NOT NULL,
    product           TEXT    NOT NULL,
    side              TEXT    NOT NULL,
    quantity_mw       TEXT    NOT NULL,
    price_cny_per_mwh TEXT    NOT NULL,
    report_seq        BIGINT NOT NULL,
    at_us             BIGINT NOT NULL,
    event_seq         BIGINT NOT NULL,
    PRIMARY KEY (client_order_id, fill_id)
);
CREATE INDEX fills_by_event_seq ON fills(event_seq);

CREATE TABLE positions (
    aggregation_id  BIGINT NOT NULL,
    market_id       BIGINT NOT NULL,
    interval_us     BIGINT NOT NULL,
    bought_mw       TEXT    NOT NULL,
    sold_mw         TEXT    NOT NULL,
    bought_value    TEXT    NOT NULL,
    sold_value      TEXT    NOT NULL,
    last_event_seq  BIGINT NOT NULL,
    PRIMARY KEY (aggregation_id, market_id, interval_us)
);

-- ---------------------------------------------------------------- operations
CREATE TABLE dispatch_instructions (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at_us           BIGINT NOT NULL,
    aggregation_id  BIGINT NOT NULL,
    resource_id     BIGINT NOT NULL,
    interval_us     BIGINT,
    setpoint_kw     TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    detail_json     TEXT    NOT NULL
);
CREATE INDEX dispatch_by_resource ON dispatch_instructions(resource_id, at_us);

-- Downsampled telemetry: one row per resource and bucket; the caller downsamples.
CREATE TABLE telemetry_samples (
    resource_id     BIGINT NOT NULL,
    bucket_start_us BIGINT NOT NULL,
    power_kw_avg    DOUBLE PRECISION NOT NULL,
    power_kw_min    DOUBLE PRECISION NOT NULL,
    power_kw_max    DOUBLE PRECISION NOT NULL,
    soc_pct         DOUBLE PRECISION,
    available       BOOLEAN NOT NULL,
    samples         BIGINT NOT NULL,
    PRIMARY KEY (resource_id, bucket_start_us)
);

CREATE TABLE settlement_records (
    id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    aggregation_id   BIGINT NOT NULL,
    market_id        BIGINT NOT NULL,
    trading_day      TEXT    NOT NULL,
    created_at_us    BIGINT NOT NULL,
    total_cny        TEXT    NOT NULL,
    detail_json      TEXT    NOT NULL
);
CREATE INDEX settlement_by_day ON settlement_records(trading_day, aggregation_id);

CREATE TABLE settlement_lines (
    record_id         BIGINT NOT NULL REFERENCES settlement_records(id),
    line_no           BIGINT NOT NULL,
    kind              TEXT    NOT NULL,
    resource_id       BIGINT,
    interval_us       BIGINT,
    quantity_mwh      TEXT    NOT NULL,
    price_cny_per_mwh TEXT    NOT NULL,
    amount_cny        TEXT    NOT NULL,
    note              TEXT    NOT NULL,
    PRIMARY KEY (record_id, line_no)
);

CREATE TABLE risk_events (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at_us           BIGINT NOT NULL,
    severity        TEXT    NOT NULL,
    rule            TEXT    NOT NULL,
    strategy_id     BIGINT,
    aggregation_id  BIGINT,
    client_order_id TEXT,
    message         TEXT    NOT NULL,
    detail_json     TEXT    NOT NULL
);
CREATE INDEX risk_events_by_time ON risk_events(at_us);

CREATE TABLE audit_log (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at_us           BIGINT NOT NULL,
    actor           TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    target          TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    detail_json     TEXT    NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log(at_us);

-- Only a hash of each token is stored; the plaintext is shown once, at creation, by the caller.
CREATE TABLE api_tokens (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name            TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    token_hash      TEXT    NOT NULL UNIQUE,
    created_at_us   BIGINT NOT NULL,
    expires_at_us   BIGINT,
    revoked_at_us   BIGINT
);
