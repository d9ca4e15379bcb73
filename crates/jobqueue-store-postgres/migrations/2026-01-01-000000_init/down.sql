DROP TABLE seq_reservations;
DROP TABLE store_state;
DROP TABLE webhook_deliveries;
DROP TABLE events;
DROP TABLE phases;
DROP TABLE jobs;
