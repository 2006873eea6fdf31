-- An optional extra limit per key (e.g. `100/1m`), counted across all call classes.
ALTER TABLE api_keys ADD COLUMN rate_limit TEXT NOT NULL DEFAULT '';
