-- Kept equivalent to migrations/postgres/0006_identifier_collation.sql: there, identifier columns
-- are given COLLATE "C" (byte order). SQLite's default collation (BINARY) already compares bytes,
-- so nothing changes here.
SELECT 1;
