-- The store is the source of truth after the first boot; the config file seeds it.
-- config_seeds remembers, per seeded object, the definition the file last gave it, so a
-- boot can tell "the file changed" (the file wins, logged as a diff) from "the file is as
-- it was" (the store, with any change made through the API, wins).
CREATE TABLE config_seeds (
    scope           TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    definition_json TEXT    NOT NULL,
    updated_at_us   BIGINT  NOT NULL,
    PRIMARY KEY (scope, key)
);

-- Risk limits set through the API (PUT /risk/limits/...), per scope
-- (`aggregation_defaults`, `strategy_defaults`, `aggregation/<id>`, `strategy/<id>`).
CREATE TABLE risk_limits (
    scope           TEXT    PRIMARY KEY,
    limits_json     TEXT    NOT NULL,
    updated_at_us   BIGINT  NOT NULL
);
