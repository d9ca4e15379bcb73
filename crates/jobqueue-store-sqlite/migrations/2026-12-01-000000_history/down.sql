DROP INDEX deliveries_ended;
DROP TABLE tombstones;
DROP TABLE store_state;
