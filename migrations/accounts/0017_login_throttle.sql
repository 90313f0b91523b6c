-- Failed logins as counters with a growing delay, replacing the per-attempt rows of
-- `login_failures` (issue #30).
--
-- The old scheme counted failures after the password was checked, so concurrent guesses all
-- passed the check before any was recorded (30 of 30 verified against a limit of 5), and five
-- failures from anywhere locked the account for everyone, its owner included. Now an attempt is
-- counted before its password is checked, under the row locks of these counters, and a counter
-- past its allowance makes the next attempt wait (a delay doubling with each failure, capped)
-- rather than locking the account. What is counted (see `accounts::throttle`):
--   'account:<name>'        attempts on an account from browsers without its device cookie;
--   'client:<name>@<addr>'  attempts on an account from one address;
--   'address:<addr>'        attempts from one address on any account;
--   'device:<id>'           attempts from a browser holding a device cookie for the account.
-- Names are valid usernames (at most 32 characters) and addresses are IPs, so keys are short.
CREATE TABLE login_throttle (
    key           text        PRIMARY KEY,
    -- Attempts counted since the counter was last forgotten (a successful login takes its
    -- own attempt back).
    failures      integer     NOT NULL DEFAULT 0 CHECK (failures >= 0),
    -- No attempt is admitted before this.
    blocked_until timestamptz NOT NULL DEFAULT now(),
    -- A window after the delay ends with no new attempt, the counter starts again from zero.
    forget_at     timestamptz NOT NULL DEFAULT now()
);
-- The periodic sweeper deletes forgotten counters by this index.
CREATE INDEX login_throttle_forget_at_idx ON login_throttle (forget_at);

DROP TABLE login_failures;
