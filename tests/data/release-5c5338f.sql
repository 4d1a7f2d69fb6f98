-- conversations.db as the last release (5c5338f, issue 9) left it: made by its `python3 main.py` with
-- two /api/chat turns and one /v1 turn on the demo account (tests/test_migrations.py upgrades it).
BEGIN TRANSACTION;
CREATE TABLE account_health (
	name VARCHAR(128) NOT NULL, 
	state VARCHAR(32) NOT NULL, 
	cooling_until FLOAT, 
	backoff FLOAT NOT NULL, 
	last_error TEXT, 
	last_error_at FLOAT, 
	requests INTEGER NOT NULL, 
	errors INTEGER NOT NULL, 
	last_used FLOAT, 
	PRIMARY KEY (name)
);
INSERT INTO "account_health" VALUES('demo','ok',NULL,0.0,NULL,NULL,3,0,1.79641203897610616689e+09);
CREATE TABLE account_hits (
	hit_id INTEGER NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	at FLOAT NOT NULL, 
	PRIMARY KEY (hit_id)
);
CREATE TABLE account_leases (
	lease_id VARCHAR(32) NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	expires_at FLOAT NOT NULL, 
	PRIMARY KEY (lease_id)
);
CREATE TABLE alerts_sent (
	event VARCHAR(160) NOT NULL, 
	until FLOAT, 
	PRIMARY KEY (event)
);
CREATE TABLE conversations (
	conversation_id VARCHAR(64) NOT NULL, 
	owner_id VARCHAR(128) NOT NULL, 
	title TEXT NOT NULL, 
	account_name VARCHAR(128), 
	token_hash VARCHAR(64), 
	upstream_conversation_id VARCHAR(128), 
	created_at FLOAT NOT NULL, 
	updated_at FLOAT NOT NULL, 
	PRIMARY KEY (conversation_id)
);
INSERT INTO "conversations" VALUES('5fd7a0cf-d3a8-4a8e-aba6-3ad6047016d2','admin','What did the release store?','demo',NULL,NULL,1.79641203872930550573e+09,1.79641203884376811977e+09);
CREATE TABLE messages (
	message_id VARCHAR(64) NOT NULL, 
	conversation_id VARCHAR(64) NOT NULL, 
	parent_id VARCHAR(64), 
	prompt TEXT NOT NULL, 
	reply TEXT NOT NULL, 
	model VARCHAR(128), 
	account_name VARCHAR(128), 
	upstream_message_id VARCHAR(128), 
	complete BOOLEAN NOT NULL, 
	created_at FLOAT NOT NULL, 
	completed_at FLOAT, 
	PRIMARY KEY (message_id), 
	FOREIGN KEY(conversation_id) REFERENCES conversations (conversation_id) ON DELETE CASCADE
);
INSERT INTO "messages" VALUES('8d668206-c952-4d24-a5f0-8eb8333ade1b','5fd7a0cf-d3a8-4a8e-aba6-3ad6047016d2',NULL,'What did the release store?','[demo account] This reply comes from the built-in demo, not a real model.

You said: What did the release store?

(This conversation has 0 earlier turns. Add a real account to settings.json to talk to a model.)','demo','demo',NULL,1,1.79641203872930550573e+09,1.79641203873005509371e+09);
INSERT INTO "messages" VALUES('05d0aa13-37be-4296-8874-89a93836db84','5fd7a0cf-d3a8-4a8e-aba6-3ad6047016d2','8d668206-c952-4d24-a5f0-8eb8333ade1b','And a follow-up','[demo account] This reply comes from the built-in demo, not a real model.

You said: And a follow-up

(This conversation has 1 earlier turn. Add a real account to settings.json to talk to a model.)','demo','demo',NULL,1,1.79641203884177255625e+09,1.79641203884376811977e+09);
CREATE TABLE pool_cursors (
	name VARCHAR(32) NOT NULL, 
	value INTEGER NOT NULL, 
	PRIMARY KEY (name)
);
INSERT INTO "pool_cursors" VALUES('free',1);
INSERT INTO "pool_cursors" VALUES('model:demo:1',1);
CREATE TABLE retired_users (
	user_id VARCHAR(128) NOT NULL, 
	retired_at FLOAT NOT NULL, 
	PRIMARY KEY (user_id)
);
CREATE TABLE turn_locks (
	conversation_id VARCHAR(64) NOT NULL, 
	holder VARCHAR(64) NOT NULL, 
	expires_at FLOAT NOT NULL, 
	PRIMARY KEY (conversation_id)
);
CREATE INDEX ix_conversations_owner_updated ON conversations (owner_id, updated_at);
CREATE INDEX ix_conversations_owner_id ON conversations (owner_id);
CREATE INDEX ix_account_leases_name ON account_leases (name);
CREATE INDEX ix_account_hits_name_at ON account_hits (name, at);
CREATE INDEX ix_messages_conversation_id ON messages (conversation_id);
COMMIT;
