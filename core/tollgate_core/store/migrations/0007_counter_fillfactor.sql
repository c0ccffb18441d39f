-- Counters that every rating batch and online request update in place (allowance use, paid
-- units, account balances) keep a fifth of each page free, so an update can put the new row
-- version on the same page and skip the index entries (a HOT update). At the default of 100
-- about four in ten allowance updates in offline rating also had to insert into the primary
-- key (bench/RESULTS.md "Offline rating"). Applies to pages written from now on; no row
-- and no constraint changes.
ALTER TABLE allowance_usage SET (fillfactor = 80);
ALTER TABLE paid_usage SET (fillfactor = 80);
ALTER TABLE ledger_accounts SET (fillfactor = 80);
