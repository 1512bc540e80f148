#!lua name=sms_alerts
--[[
  sms-alerts Redis Functions library.

  FUNCTION LOAD replaces a whole library, so this one file is the library and
  LIBRARY_VERSION is its version: a change to any function raises it, with
  one step in MIGRATIONS (src/store/migrate.rs), so that a Redis holding an
  older library loads this one.

  Functions, each headed below by its KEYS, ARGV and return value:
    sms_create        create, adopt or check the queue; set its retention
    sms_settle        acknowledge and count a batch of send results
    sms_report        sms_settle, as senders from before channels call it
    sms_claim         take over idle pending entries, or dead-letter them
    sms_renew         extend the lease of entries a sender is working on
    sms_hold_name     take or renew a sender's or a producer run's lease
    sms_release_name  give a lease back
    sms_snapshot      read everything the monitor shows (read-only)
    sms_prune         remove a consumer from the group if that loses nothing
    sms_trim          apply the queue's retention to both streams
    sms_run_start     record a new producer run
    sms_run_resume    take over a run whose producer is gone
    sms_run_end       end a producer run
    sms_requeue_to    move a channel's dead letters back into the stream
    sms_requeue       sms_requeue_to, as callers from before channels call it
    sms_dead_purge    remove dead letters older than an id
    sms_partitions    grow the queue's partition count
    sms_channel       give a partition a channel (its consumer group)
    sms_channels      record the queue's channels
    sms_gateway_take  take tokens of a gateway's shared throughput cap
    sms_sender_state  publish a sender's gateway and breaker state
    sms_pause         pause or resume a channel's sending
    sms_ingest        add messages an HTTP request brought, once per request
    sms_version       LIBRARY_VERSION (read-only)

  Every multi-step update that must be atomic runs here, server-side. Every
  key a function touches is passed in KEYS and all of them share one hash tag
  (e.g. {sms:0}), so the library runs unchanged on Redis Cluster.

  Identity. A queue is created once (sms_create, run by `migrate`): its
  `queue` hash holds a random epoch. Every function that writes takes the
  queue hash as KEYS[1] and the epoch its caller started with as ARGV[1], and
  refuses with an error starting `LOST` when the identity is gone (FLUSHALL,
  a Redis restarted without its data, another Redis behind the address) or
  differs. Nothing here ever re-creates lost state: that is `migrate` on an
  empty Redis, or `repair`, by an operator.

  Check, then write. Redis does not roll a function back when a command in
  it fails, so every function checks the type of each key it writes and
  that every counter it increments holds an integer before its first write,
  and refuses with an error starting `DAMAGED` that names the key. A failed
  call therefore changes nothing.

  Counters live in the `stats` hash (totals) and one hash per sender
  (`stats:<consumer>`). Fields, all integers:
    produced      messages producers wrote
    sent          messages acknowledged for the first time (XACK returned 1)
    duplicates    successful sends of a message someone had already settled
    failed        failed send attempts
    attempts      send attempts of any outcome
    send_time_us  sum of the simulated send times of all attempts
    dead          messages moved to the dead stream
    dead_<reason> the same, by reason (max_attempts, malformed, deleted)
    trimmed       settled entries removed from the stream by retention
    dead_trimmed  dead letters removed by the dead stream's retention
    dead_purged   dead letters removed by `dead purge`
    requeued      dead letters moved back into the stream by `dead requeue`
    abandoned     messages `repair` gave up when it re-created a lost group
    uncounted     messages settled before `repair` re-created lost counters
                  (sent, skipped, abandoned or before the channel: unknown)
]]

local LIBRARY_VERSION = 14

-- Upper bounds (microseconds) of the send-time histogram buckets; the last
-- bucket, 'le_inf', takes the rest. Fields of the latency hash: le_<bound>.
local LATENCY_BOUNDS = { 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000,
                         500000, 1000000, 2000000, 5000000, 10000000 }

-- The latency hash's field of each bucket, 'le_inf' last. Built at load,
-- where only plain Lua is available (no ipairs yet).
local BUCKET_NAMES = {}
for i = 1, #LATENCY_BOUNDS do BUCKET_NAMES[i] = 'le_' .. LATENCY_BOUNDS[i] end
BUCKET_NAMES[#LATENCY_BOUNDS + 1] = 'le_inf'

-- The counters a settling call (report, claim) may increment.
local SETTLE_COUNTERS = { 'sent', 'duplicates', 'failed', 'attempts', 'send_time_us',
                          'dead', 'dead_max_attempts', 'dead_deleted', 'dead_malformed',
                          'dead_expired', 'skipped', 'deferred' }

-- A dead-letter entry keeps at most this many original field/value pairs, so
-- that a poison entry with thousands of fields cannot overflow Lua's stack,
-- and at most this many bytes of each name or value.
local MAX_DEAD_FIELDS = 64
local MAX_DEAD_VALUE_BYTES = 4096

-- A stream entry larger than this (names and values together), or with more
-- fields, cannot be a message: it is dead-lettered as malformed instead of
-- being handed to a sender whole.
local MAX_ENTRY_BYTES = 65536
local MAX_ENTRY_FIELDS = 64

-- Report batches of one sender process remembered below its highest one;
-- a sender has far fewer in flight. 32: the width of Lua's bit operations.
local BATCH_WINDOW = 32

-- Most ids passed to one XACK: unpack() puts each on Lua's C stack, which
-- holds 8000 slots.
local ACK_CHUNK = 1000

-- Most entries one sms_claim call claims (each costs a claim and its fields
-- in the reply); the caller walks the pending list with the cursor it returns.
local CLAIM_MAX = 200

-- Up to this many pending entries, sms_claim leaves finding the idle ones
-- to XPENDING's IDLE filter, which walks the whole list from the cursor in C
-- (about 0.1 us a row: 2 ms at most). A longer list is walked in slices of
-- CLAIM_SCAN rows looked at in Lua (about 1.5 us a row), so that one call's
-- cost stays bounded however long the list.
local IDLE_SCAN_MAX = 20000
local CLAIM_SCAN = 1000

-- Most entries one sms_trim call removes from each stream (approximate
-- trimming removes whole nodes of ~100 entries), so that a call after a
-- long pause does bounded work; the next call goes on.
local TRIM_LIMIT = 100000

-- Most dead letters sms_dead_purge deletes one by one (those left in a
-- partly old stream node) per call.
local PURGE_EXACT = 1000

-- ---------------------------------------------------------------------------
-- Errors and checks. Each check returns nil when all is well, else the error
-- reply to return before anything was written.

local function lost(text) return redis.error_reply('LOST ' .. text) end
local function damaged(text) return redis.error_reply('DAMAGED ' .. text) end

local function key_type(key) return redis.call('TYPE', key)['ok'] end

-- A value as it may be printed in an error: short, and quoted.
local function shown(value)
  if #value > 40 then value = string.sub(value, 1, 40) .. '...' end
  return string.format('%q', value)
end

local function expect_type(key, want, may_be_missing)
  local t = key_type(key)
  if t == want or (may_be_missing and t == 'none') then return nil end
  if t == 'none' then return damaged(key .. ' is missing') end
  return damaged(key .. ' is a ' .. t .. ', not a ' .. want)
end

-- The queue's identity: its hash must hold the epoch the caller started with.
local function check_identity(queue, epoch)
  local t = key_type(queue)
  if t == 'none' then
    return lost('the queue identity ' .. queue .. ' is gone: Redis was flushed, ' ..
                'restarted without its data, or is another Redis')
  end
  if t ~= 'hash' then return damaged(queue .. ' is a ' .. t .. ', not a hash') end
  local current = redis.call('HGET', queue, 'epoch')
  if not current then
    return lost(queue .. ' holds no epoch: the queue identity was removed')
  end
  if current ~= epoch then
    return lost('the queue was created anew (epoch ' .. current ..
                ', this process started with ' .. epoch .. '): its earlier state is gone')
  end
  return nil
end

-- Whether a hash field's value is an integer HINCRBY takes and can add to
-- without overflowing: Redis refuses leading zeros and '-0' (string2ll), and
-- 18 digits leave more headroom than any call's increment needs.
local function is_integer(value)
  if value == '0' then return true end
  local digits = string.match(value, '^%-?([1-9]%d*)$')
  return digits ~= nil and #digits <= 18
end

local function check_counters(key, fields)
  local values = redis.call('HMGET', key, unpack(fields))
  for i = 1, #fields do
    local value = values[i]
    if value and not is_integer(value) then
      return damaged('counter ' .. fields[i] .. ' of ' .. key .. ' is not a number: ' .. shown(value))
    end
  end
  return nil
end

-- The group's row of XINFO GROUPS as a table (name, pending, ...), or nil.
local function group_info(stream, group)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info.name == group then return info end
  end
  return nil
end

local function group_exists(stream, group)
  return group_info(stream, group) ~= nil
end

local function check_group(stream, group)
  if group_exists(stream, group) then return nil end
  return damaged('consumer group ' .. group .. ' of ' .. stream .. ' is gone; it is not ' ..
                 're-created by itself, which would send every message in the stream again')
end

-- Runs each check (a function returning nil or an error reply) in order;
-- the first error wins.
local function first_error(...)
  for _, check in ipairs({ ... }) do
    local err = check()
    if err then return err end
  end
  return nil
end

-- ---------------------------------------------------------------------------
-- Stream ids, compared exactly (Lua numbers cannot hold every 64-bit part).

local function id_parts(id)
  return string.match(id, '^(%d+)%-(%d+)$')
end

local function number_less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end

local function id_less(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  if am ~= bm then return number_less(am, bm) end
  return number_less(as, bs)
end

local function id_ms(id)
  return tonumber((id_parts(id)))
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- ---------------------------------------------------------------------------
-- Shared steps.

-- Fields of a stream entry as a flat list, or nil when the entry is gone.
local function entry_fields(stream, id)
  local found = redis.call('XRANGE', stream, id, id)
  if #found == 0 then return nil end
  return found[1][2]
end

local function too_big(fields)
  if #fields > MAX_ENTRY_FIELDS * 2 then return true end
  local bytes = 0
  for i = 1, #fields do bytes = bytes + #fields[i] end
  return bytes > MAX_ENTRY_BYTES
end

-- Writes a dead letter: the entry's fields (clipped), then why and by whom.
local function write_dead_letter(dead, id, fields, reason, attempts, consumer)
  local args = { dead, '*' }
  local kept = math.min(#fields, MAX_DEAD_FIELDS * 2)
  local cut = 0
  for i = 1, kept do
    local value = fields[i]
    if #value > MAX_DEAD_VALUE_BYTES then
      value, cut = string.sub(value, 1, MAX_DEAD_VALUE_BYTES), cut + 1
    end
    args[#args + 1] = value
  end
  if kept < #fields then
    args[#args + 1] = 'dead_truncated_fields'
    args[#args + 1] = tostring((#fields - kept) / 2)
  end
  if cut > 0 then
    args[#args + 1] = 'dead_truncated_values'
    args[#args + 1] = tostring(cut)
  end
  for _, v in ipairs({
    'dead_reason', reason,
    'dead_attempts', tostring(attempts),
    'dead_consumer', consumer,
    'dead_message_id', id,
    'dead_at_ms', tostring(now_ms()),
  }) do args[#args + 1] = v end
  redis.call('XADD', unpack(args))
end

-- Moves one pending entry to the dead stream and acknowledges it. Returns 1
-- if it did, 0 if the entry was no longer pending (already settled by someone
-- else), so a message can never be dead-lettered twice. `fields` are the
-- entry's when the caller has them.
local function dead_letter(stream, dead, group, id, reason, attempts, consumer, fields)
  if redis.call('XACK', stream, group, id) == 0 then return 0 end
  write_dead_letter(dead, id, fields or entry_fields(stream, id) or {}, reason, attempts, consumer)
  return 1
end

-- Adds n dead letters of `reason` to a call's deltas `d` (see count).
local function count_dead(d, reason, n)
  d.dead, d['dead_' .. reason] = d.dead + n, d['dead_' .. reason] + n
end

-- Adds each non-zero delta to both the totals hash and the sender's hash.
local function count(stats, cstats, deltas)
  for field, delta in pairs(deltas) do
    if delta ~= 0 then
      redis.call('HINCRBY', stats, field, delta)
      redis.call('HINCRBY', cstats, field, delta)
    end
  end
end

-- The pending-list row of one id: owner and delivery count, or nil.
local function pending_row(stream, group, id)
  local row = redis.call('XPENDING', stream, group, id, id, 1)
  if #row == 0 then return nil end
  return { owner = row[1][2], deliveries = tonumber(row[1][4]) }
end

-- The checks of a call that settles messages: identity, key types, group,
-- and every counter it may increment.
local function check_settling(queue, epoch, stream, dead, stats, cstats, group)
  return first_error(
    function() return check_identity(queue, epoch) end,
    function() return expect_type(stream, 'stream') end,
    function() return expect_type(dead, 'stream', true) end,
    function() return expect_type(stats, 'hash') end,
    function() return expect_type(cstats, 'hash', true) end,
    function() return check_group(stream, group) end,
    function() return check_counters(stats, SETTLE_COUNTERS) end,
    function() return check_counters(cstats, SETTLE_COUNTERS) end)
end

-- ---------------------------------------------------------------------------

--[[
  sms_create: create the queue, or adopt one made before queues had an
  identity, or check an existing one; set its retention. Run by `migrate`.
  KEYS: 1 queue, 2 stream, 3 stats, 4 dead, 5 migrations
  ARGV: 1 group, 2 a new random epoch (used only if the queue is created),
        3 retention_ms ('' keeps the current one; -1 keeps entries forever),
        4 dead_retention_ms (same), 5 default retention_ms,
        6 default dead_retention_ms, 7 the migrations-hash field that records
        that the queue was given an identity
  Returns: { 'created' | 'adopted' | 'existing', epoch, retention_ms,
             dead_retention_ms }
  A queue whose identity was recorded (the migration name in the migrations
  hash) but is gone while other keys remain is refused (LOST): that is
  damage for `repair`, not a new queue. So is a stream with history whose
  group is gone.
]]
local function sms_create(keys, args)
  local queue, stream, stats, dead, migrations = keys[1], keys[2], keys[3], keys[4], keys[5]
  local group, new_epoch = args[1], args[2]
  local retention, dead_retention = args[3], args[4]
  local identity_step = args[7]

  local err = first_error(
    function() return expect_type(queue, 'hash', true) end,
    function() return expect_type(stream, 'stream', true) end,
    function() return expect_type(stats, 'hash', true) end,
    function() return expect_type(dead, 'stream', true) end,
    function() return expect_type(migrations, 'hash', true) end,
    function() return check_counters(stats, SETTLE_COUNTERS) end)
  if err then return err end

  local epoch = redis.call('HGET', queue, 'epoch')
  local status = 'existing'
  local has_stream = key_type(stream) == 'stream'
  if epoch and not has_stream then
    return damaged(stream .. ' is missing while the queue exists: its messages are gone; ' ..
                   'see `sms-alerts repair`')
  end
  if epoch and key_type(stats) == 'none' then
    return damaged(stats .. ' is missing while the queue exists: see `sms-alerts repair`')
  end
  if not epoch then
    local had_identity = redis.call('HEXISTS', migrations, identity_step) == 1
    local has_data = has_stream or key_type(stats) == 'hash' or key_type(dead) == 'stream'
    if had_identity and has_data then
      return lost('the queue identity ' .. queue .. ' is gone while its data remains: ' ..
                  'see `sms-alerts repair`')
    end
    if has_data then status = 'adopted' else status = 'created' end
    epoch = new_epoch
  end
  if has_stream and not group_exists(stream, group) then
    local info = redis.call('XINFO', 'STREAM', stream)
    local added = 0
    for i = 1, #info, 2 do
      if info[i] == 'entries-added' then added = info[i + 1] end
    end
    if added > 0 then return check_group(stream, group) end
  end

  if status ~= 'existing' then
    redis.call('HSET', queue, 'epoch', epoch, 'created_ms', tostring(now_ms()))
    redis.call('HSETNX', queue, 'retention_ms', args[5])
    redis.call('HSETNX', queue, 'dead_retention_ms', args[6])
    redis.call('HSETNX', migrations, identity_step, tostring(now_ms()))
  end
  if retention ~= '' then redis.call('HSET', queue, 'retention_ms', retention) end
  if dead_retention ~= '' then redis.call('HSET', queue, 'dead_retention_ms', dead_retention) end
  if not has_stream or not group_exists(stream, group) then
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  end
  -- The totals hash exists from the start, so that its disappearance is
  -- seen as damage rather than as a fresh queue.
  redis.call('HSETNX', stats, 'produced', '0')
  local current = redis.call('HMGET', queue, 'retention_ms', 'dead_retention_ms')
  return { status, epoch, current[1], current[2] }
end

--[[
  sms_settle: acknowledge and count a batch of send results, atomically.
  KEYS: 1 queue, 2 stream, 3 dead stream, 4 stats, 5 stats:<consumer>,
        6 latency histogram
  ARGV: 1 epoch, 2 group, 3 consumer, 4 max_attempts, 5 retry_idle_ms,
        6 batch_token, 7 batch_seq,
        8 n_ok, 9 n_fail, 10 n_malformed, 11 n_skipped, 12 n_deferred,
        13 n_expired, 14 n_probe_failed, 15 defer_idle_ms,
        16 send_time_us: the summed send times of the attempts (ok, failed,
          probes failed),
        17 .. 16 + #BUCKET_NAMES: those attempts counted per histogram
          bucket, in BUCKET_NAMES order,
        then the ids, grouped in the order of the counts.
  Returns: { sent, duplicates, failed, dead, replayed, skipped, deferred }
  Successes are acknowledged with one XACK per ACK_CHUNK ids (each XACK is
  also one AOF record): those XACK acknowledged count as sent, the rest as
  duplicates (someone settled them already). A failure stays pending with its
  idle time set to retry_idle_ms, so it becomes claimable after
  (lease - retry_idle) = the retry backoff; at max_attempts deliveries it is
  dead-lettered instead. A skipped message (nothing for this channel: no
  address, or requeued for another channel) is acknowledged and counted as
  skipped. A deferred one (the gateway throttled it, or its breaker is open:
  never attempted) stays pending with its delivery count set back by one, so
  waiting spends no attempt, and idle time defer_idle_ms. An expired one
  goes to the dead stream as `expired`. A failed probe (a send a
  half-open breaker let through to test the gateway) is a failure, except
  that it never uses up a message's last attempt: then its delivery count
  is set back, as a deferred one's, so no message dies of an outage.
  The sender buckets the send times it measured, so the per-result work here
  is only the Redis commands each result needs. The buckets are counted in
  the channel's histogram and in the sender's hash (its le_<bound> fields),
  whose sums by gateway are the gateways' percentiles.
  (batch_token, batch_seq) make a retried call idempotent: a batch whose reply
  was lost is not applied twice. The sender's hash keeps the highest seq
  applied and a bitmap of the BATCH_WINDOW seqs below it, so batches may be
  applied out of order (several are in flight, and a failed one is retried
  after later ones landed) and each still applies exactly once.
]]
local function sms_settle(keys, args)
  local queue, stream, dead, stats, cstats, latency =
    keys[1], keys[2], keys[3], keys[4], keys[5], keys[6]
  local epoch, group, consumer = args[1], args[2], args[3]
  local max_attempts, retry_idle = tonumber(args[4]), args[5]
  local token, seq = args[6], tonumber(args[7])
  local defer_idle = args[15]

  local buckets_at = 17
  local incremented = {}
  for i = 1, #BUCKET_NAMES do
    if args[buckets_at + i - 1] ~= '0' then incremented[#incremented + 1] = BUCKET_NAMES[i] end
  end
  local err = first_error(
    function() return check_settling(queue, epoch, stream, dead, stats, cstats, group) end,
    function() return expect_type(latency, 'hash', true) end,
    function() return #incremented > 0 and check_counters(latency, incremented) or nil end,
    function()
      local fields = { 'batch_seq', 'batch_window' }
      for _, bucket in ipairs(incremented) do fields[#fields + 1] = bucket end
      return check_counters(cstats, fields)
    end)
  if err then return err end

  local last = redis.call('HMGET', cstats, 'batch_token', 'batch_seq', 'batch_window')
  local high, window = 0, 0
  if last[1] == token then
    high = tonumber(last[2]) or 0
    window = tonumber(last[3]) or 1
  end
  if seq <= high then
    local back = high - seq
    if back >= BATCH_WINDOW or bit.band(window, bit.lshift(1, back)) ~= 0 then
      return { 0, 0, 0, 0, 1, 0, 0 }
    end
  end

  local n_ok, n_fail, n_malformed = tonumber(args[8]), tonumber(args[9]), tonumber(args[10])
  local n_skipped, n_deferred, n_expired = tonumber(args[11]), tonumber(args[12]), tonumber(args[13])
  local n_probe = tonumber(args[14])
  local d = { sent = 0, duplicates = 0, failed = n_fail + n_probe,
              attempts = n_ok + n_fail + n_probe,
              send_time_us = tonumber(args[16]), dead = 0, dead_max_attempts = 0,
              dead_deleted = 0, dead_malformed = 0, dead_expired = 0, skipped = 0,
              deferred = 0 }
  local at = buckets_at + #BUCKET_NAMES

  local function acknowledge(first, n)
    local acked = 0
    for from = first, first + n - 1, ACK_CHUNK do
      local to = math.min(from + ACK_CHUNK - 1, first + n - 1)
      acked = acked + redis.call('XACK', stream, group, unpack(args, from, to))
    end
    return acked
  end
  local function bury(id, reason, deliveries, holder)
    count_dead(d, reason, dead_letter(stream, dead, group, id, reason, deliveries, holder))
  end

  -- A message to be tried again: claimable after the backoff; or, when
  -- `spare` (never attempted) or its last attempt is `spare_last`, with
  -- its delivery count set back; else, at its last attempt, dead. One no
  -- longer pending, or reclaimed by another sender, is theirs now: only
  -- the attempt is ours to count.
  local function again(id, spare, spare_last)
    local row = pending_row(stream, group, id)
    if not (row and row.owner == consumer) then return end
    local last = row.deliveries >= max_attempts
    if entry_fields(stream, id) == nil then
      bury(id, 'deleted', row.deliveries, consumer)
    elseif spare or (last and spare_last) then
      redis.call('XCLAIM', stream, group, consumer, 0, id, 'IDLE', defer_idle,
                 'RETRYCOUNT', math.max(row.deliveries - 1, 0), 'JUSTID')
      d.deferred = d.deferred + 1
    elseif last then
      bury(id, 'max_attempts', row.deliveries, consumer)
    else
      redis.call('XCLAIM', stream, group, consumer, 0, id, 'IDLE', retry_idle, 'JUSTID')
    end
  end

  d.sent = acknowledge(at, n_ok)
  d.duplicates = n_ok - d.sent
  at = at + n_ok

  for i = at, at + n_fail - 1 do again(args[i], false, false) end
  at = at + n_fail

  for i = at, at + n_malformed - 1 do
    local row = pending_row(stream, group, args[i])
    local deliveries = 0
    if row then deliveries = row.deliveries end
    bury(args[i], 'malformed', deliveries, consumer)
  end
  at = at + n_malformed

  d.skipped = acknowledge(at, n_skipped)
  at = at + n_skipped

  for i = at, at + n_deferred - 1 do again(args[i], true, true) end
  at = at + n_deferred

  for i = at, at + n_expired - 1 do
    local row = pending_row(stream, group, args[i])
    if row and row.owner == consumer then bury(args[i], 'expired', row.deliveries, consumer) end
  end
  at = at + n_expired

  for i = at, at + n_probe - 1 do again(args[i], false, true) end

  count(stats, cstats, d)
  for i = 1, #BUCKET_NAMES do
    local n = tonumber(args[buckets_at + i - 1])
    if n ~= 0 then
      redis.call('HINCRBY', latency, BUCKET_NAMES[i], n)
      redis.call('HINCRBY', cstats, BUCKET_NAMES[i], n)
    end
  end
  if seq > high then
    -- bit.lshift takes its shift modulo 32: a jump past the window clears it.
    if seq - high >= BATCH_WINDOW then window = 0 else window = bit.lshift(window, seq - high) end
    window, high = bit.bor(window, 1), seq
  else
    window = bit.bor(window, bit.lshift(1, high - seq))
  end
  redis.call('HSET', cstats, 'batch_token', token, 'batch_seq', high, 'batch_window', window)
  return { d.sent, d.duplicates, d.failed, d.dead, 0, d.skipped, d.deferred }
end

--[[
  sms_report: sms_settle with the argument layout of senders from before
  channels, which still call it while a queue is upgraded under them.
  KEYS: as sms_settle
  ARGV: 1 .. 10 as sms_settle, 11 send_time_us, then the buckets, then the
        ids of the ok, failed and malformed results.
  Returns: as sms_settle.
]]
local function sms_report(keys, args)
  local settle_args = {}
  for i = 1, 10 do settle_args[i] = args[i] end
  settle_args[11], settle_args[12], settle_args[13], settle_args[14] = '0', '0', '0', '0'
  settle_args[15] = args[5]
  for i = 11, #args do settle_args[#settle_args + 1] = args[i] end
  return sms_settle(keys, settle_args)
end

--[[
  sms_claim: take over pending entries idle for at least min_idle_ms, or
  dead-letter them when they have used up their attempts, are gone from the
  stream, or are too big to be a message.
  KEYS: 1 queue, 2 stream, 3 dead stream, 4 stats, 5 stats:<consumer>
  ARGV: 1 epoch, 2 group, 3 consumer, 4 min_idle_ms, 5 start id (a cursor:
        '-' or '(<id>'), 6 count, 7 max_attempts,
        8 owner: '' for any consumer, or one consumer's name (a restarted
          sender recovering its own pending list, with min_idle_ms 0)
  Returns: { next_cursor ('0' when the scan reached the end), dead,
             { id, deliveries, { field, value, ... } }, ... }
  Each call claims no more than `count` (at most CLAIM_MAX) entries, from
  the cursor on, and its cost is bounded however long the pending list (see
  IDLE_SCAN_MAX); the caller walks the list with the cursor it returns.
  `deliveries` counts this claim: it is the attempt the claimer now makes.
]]
local function sms_claim(keys, args)
  local queue, stream, dead, stats, cstats = keys[1], keys[2], keys[3], keys[4], keys[5]
  local epoch, group, consumer, min_idle = args[1], args[2], args[3], tonumber(args[4])
  local start, max_attempts, owner = args[5], tonumber(args[7]), args[8]
  local batch = math.min(tonumber(args[6]), CLAIM_MAX)

  local err = check_settling(queue, epoch, stream, dead, stats, cstats, group)
  if err then return err end

  local d = { dead = 0, dead_max_attempts = 0, dead_deleted = 0, dead_malformed = 0 }
  local function bury(id, reason, attempts, holder, fields)
    count_dead(d, reason, dead_letter(stream, dead, group, id, reason, attempts, holder, fields))
  end

  local claimed = {}
  local function take(id, holder, deliveries)
    if deliveries >= max_attempts then
      local fields = entry_fields(stream, id)
      if fields == nil then
        bury(id, 'deleted', deliveries, holder, {})
      elseif too_big(fields) then
        bury(id, 'malformed', deliveries, holder, fields)
      else
        bury(id, 'max_attempts', deliveries, holder, fields)
      end
      return
    end
    -- XCLAIM drops from the pending list an entry gone from the stream
    -- and returns nothing for it.
    local got = redis.call('XCLAIM', stream, group, consumer, min_idle, id)
    if #got == 0 then
      write_dead_letter(dead, id, {}, 'deleted', deliveries, holder)
      count_dead(d, 'deleted', 1)
    elseif too_big(got[1][2]) then
      bury(id, 'malformed', deliveries, holder, got[1][2])
    else
      claimed[#claimed + 1] = { id, deliveries + 1, got[1][2] }
    end
  end

  local cursor = '0'
  if tonumber(group_info(stream, group).pending) <= IDLE_SCAN_MAX then
    local query = { 'XPENDING', stream, group, 'IDLE', min_idle, start, '+', batch }
    if owner ~= '' then query[#query + 1] = owner end
    local rows = redis.call(unpack(query))
    if #rows == batch then cursor = '(' .. rows[#rows][1] end
    for _, row in ipairs(rows) do take(row[1], row[2], tonumber(row[4])) end
  else
    local query = { 'XPENDING', stream, group, start, '+', CLAIM_SCAN }
    if owner ~= '' then query[#query + 1] = owner end
    local rows = redis.call(unpack(query))
    if #rows == CLAIM_SCAN then cursor = '(' .. rows[#rows][1] end
    for i, row in ipairs(rows) do
      if #claimed >= batch then
        cursor = '(' .. rows[i - 1][1]
        break
      end
      if tonumber(row[3]) >= min_idle then take(row[1], row[2], tonumber(row[4])) end
    end
  end
  count(stats, cstats, d)
  return { cursor, d.dead, unpack(claimed) }
end

--[[
  sms_renew: extend the lease of entries this sender is still working on, by
  resetting their idle time, so other senders do not reclaim live work.
  KEYS: 1 queue, 2 stream
  ARGV: 1 epoch, 2 group, 3 consumer, then ids
  Returns: the ids that are no longer this sender's (settled or reclaimed).
]]
local function sms_renew(keys, args)
  local queue, stream = keys[1], keys[2]
  local group, consumer = args[2], args[3]
  local err = first_error(
    function() return check_identity(queue, args[1]) end,
    function() return expect_type(stream, 'stream') end,
    function() return check_group(stream, group) end)
  if err then return err end
  local lost_ids = {}
  for i = 4, #args do
    local id = args[i]
    local row = pending_row(stream, group, id)
    -- XCLAIM drops a deleted entry from the pending list; leave those for
    -- sms_report / sms_claim to account for.
    if row and row.owner == consumer and entry_fields(stream, id) ~= nil then
      redis.call('XCLAIM', stream, group, consumer, 0, id, 'JUSTID')
    else
      lost_ids[#lost_ids + 1] = id
    end
  end
  return lost_ids
end

--[[
  sms_hold_name: take or renew a liveness lease: a sender's on its name, or a
  producer's on its run.
  KEYS: 1 queue, 2 the lease key
  ARGV: 1 epoch, 2 token of this process, 3 ttl_ms
  Returns: { 1, ttl_ms, lapsed } when this process holds the lease (lapsed
           1 when nobody held it: taken now, or retaken after it ran out),
           { 0, remaining_ttl_ms } when another live process does.
  Allowed when Redis is out of memory: a live process must keep its lease
  while it waits for memory, or it would be taken for dead.
]]
local function sms_hold_name(keys, args)
  local queue, key, token, ttl = keys[1], keys[2], args[2], args[3]
  local err = first_error(
    function() return check_identity(queue, args[1]) end,
    function() return expect_type(key, 'string', true) end)
  if err then return err end
  local holder = redis.call('GET', key)
  if holder == false or holder == token then
    redis.call('SET', key, token, 'PX', ttl)
    local lapsed = 0
    if holder == false then lapsed = 1 end
    return { 1, tonumber(ttl), lapsed }
  end
  return { 0, redis.call('PTTL', key) }
end

--[[
  sms_release_name: give a lease back on a clean exit. Allowed when Redis is
  out of memory: it only deletes.
  KEYS: 1 the lease key
  ARGV: 1 token of this process
  Returns: 1 if released, 0 if the lease was not held by this process.
]]
local function sms_release_name(keys, args)
  if key_type(keys[1]) ~= 'string' then return 0 end
  if redis.call('GET', keys[1]) == args[1] then
    return redis.call('DEL', keys[1])
  end
  return 0
end

--[[
  sms_snapshot: everything the monitor shows, read in one consistent call.
  Never fails on damaged keys: it reports them.
  KEYS: 1 queue, 2 stream, 3 dead stream, 4 stats, 5 latency histogram,
        [6 the queue's totals, for a channel whose counters are not in them]
  ARGV: 1 group, 2 the epoch the caller started with ('' for none)
  Returns: a flat list of name, value pairs: the stats hash's integer fields
  (with a channel's hash, also produced, requeued and trimmed of the totals),
  plus entries_added, length, group_exists, pending, lag (-1 when Redis does
  not know it), dead_length, latency_le_<bound> per histogram bucket,
  retention_ms and dead_retention_ms (-1: forever; -2: unset), now_ms,
  oldest_pending_ms and oldest_queued_ms (ids' times; -1 when none),
  floor_ms (the oldest entry retention must keep for a group that has not
  read everything or has entries pending; -1 when none) and floor_group
  (its group), state (0 sound, 1 identity gone,
  2 identity changed, 3 group gone, 4 damaged) with state_detail, and epoch.
]]
local function sms_snapshot(keys, args)
  local queue, stream, dead, stats, latency = keys[1], keys[2], keys[3], keys[4], keys[5]
  local group, epoch = args[1], args[2]
  local out = {}
  local function put(name, value)
    out[#out + 1] = name
    out[#out + 1] = value
  end
  local state, detail = 0, ''
  local function problem(code, text)
    if state == 0 then state, detail = code, text end
  end

  local qtype = key_type(queue)
  local current = false
  if qtype == 'hash' then
    current = redis.call('HGET', queue, 'epoch')
    local retention = redis.call('HMGET', queue, 'retention_ms', 'dead_retention_ms')
    put('retention_ms', tonumber(retention[1] or '-2') or -2)
    put('dead_retention_ms', tonumber(retention[2] or '-2') or -2)
  end
  if not current then
    problem(1, 'the queue identity ' .. queue .. ' is gone: Redis was flushed, restarted ' ..
               'without its data, or is another Redis')
  elseif epoch ~= '' and current ~= epoch then
    problem(2, 'the queue was created anew (epoch ' .. current .. ', this process started with ' ..
               epoch .. '): its earlier state is gone')
  end
  put('epoch', current or '')

  if key_type(stats) == 'hash' then
    local values = redis.call('HGETALL', stats)
    for i = 1, #values, 2 do
      local name, value = values[i], values[i + 1]
      if is_integer(value) then
        put(name, tonumber(value))
      elseif name ~= 'batch_token' then
        problem(4, 'counter ' .. name .. ' of ' .. stats .. ' is not a number: ' .. shown(value))
      end
    end
  elseif key_type(stats) ~= 'none' then
    problem(4, stats .. ' is a ' .. key_type(stats) .. ', not a hash')
  elseif current then
    problem(4, stats .. ' is missing')
  end
  local totals = keys[6]
  if totals and totals ~= stats and key_type(totals) == 'hash' then
    local values = redis.call('HMGET', totals, 'produced', 'requeued', 'trimmed')
    for i, name in ipairs({ 'produced', 'requeued', 'trimmed' }) do
      if values[i] and is_integer(values[i]) then put(name, tonumber(values[i])) end
    end
  end

  local now = now_ms()
  put('now_ms', now)
  local stype = key_type(stream)
  local added, length, exists, pending, lag = 0, 0, 0, 0, -1
  local oldest_pending, oldest_queued, floor_ms, floor_group = -1, -1, -1, ''
  if stype == 'stream' then
    local info = redis.call('XINFO', 'STREAM', stream)
    for i = 1, #info, 2 do
      if info[i] == 'entries-added' then added = info[i + 1] end
      if info[i] == 'length' then length = info[i + 1] end
    end
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
      local f = {}
      for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
      -- The oldest entry the group still needs: its oldest pending one, or
      -- the first it has not read. One that has read and settled every
      -- entry needs none, however old the newest is; one that has read
      -- nothing needs the stream's first entry, not id 0-0.
      local needed = nil
      if f['pending'] > 0 then
        local summary = redis.call('XPENDING', stream, f['name'])
        needed = summary[2]
        if f['name'] == group then oldest_pending = id_ms(summary[2]) end
      end
      local unread = redis.call('XRANGE', stream, '(' .. f['last-delivered-id'], '+', 'COUNT', 1)
      if #unread == 1 and (needed == nil or id_less(unread[1][1], needed)) then
        needed = unread[1][1]
      end
      if needed and (floor_ms == -1 or id_ms(needed) < floor_ms) then
        floor_ms, floor_group = id_ms(needed), f['name']
      end
      if f['name'] == group then
        exists, pending = 1, f['pending']
        if type(f['lag']) == 'number' then lag = f['lag'] end
        local next_entry = redis.call('XRANGE', stream, '(' .. f['last-delivered-id'], '+', 'COUNT', 1)
        if #next_entry == 1 then oldest_queued = id_ms(next_entry[1][1]) end
      end
    end
    if exists == 0 then
      problem(3, 'consumer group ' .. group .. ' of ' .. stream .. ' is gone')
    end
  elseif stype ~= 'none' then
    problem(4, stream .. ' is a ' .. stype .. ', not a stream')
  elseif current then
    problem(3, stream .. ' and its consumer group ' .. group .. ' are gone')
  end
  put('entries_added', added)
  put('length', length)
  put('group_exists', exists)
  put('pending', pending)
  put('lag', lag)
  put('oldest_pending_ms', oldest_pending)
  put('oldest_queued_ms', oldest_queued)
  put('floor_ms', floor_ms)
  put('floor_group', floor_group)

  local dead_length = 0
  local dtype = key_type(dead)
  if dtype == 'stream' then
    dead_length = redis.call('XLEN', dead)
  elseif dtype ~= 'none' then
    problem(4, dead .. ' is a ' .. dtype .. ', not a stream')
  end
  put('dead_length', dead_length)
  local ltype = key_type(latency)
  if ltype == 'hash' then
    local hist = redis.call('HGETALL', latency)
    for i = 1, #hist, 2 do
      if is_integer(hist[i + 1]) then
        put('latency_' .. hist[i], tonumber(hist[i + 1]))
      else
        problem(4, 'counter ' .. hist[i] .. ' of ' .. latency .. ' is not a number: ' ..
                   shown(hist[i + 1]))
      end
    end
  elseif ltype ~= 'none' then
    problem(4, latency .. ' is a ' .. ltype .. ', not a hash')
  end
  put('state', state)
  put('state_detail', detail)
  return out
end

--[[
  sms_prune: remove a consumer from the group, only if that loses nothing:
  no live process holds its name, it has no pending entries (XGROUP
  DELCONSUMER would drop them, unclaimable), and it has been idle long enough.
  Checked and done in one atomic call, so nothing can change in between.
  KEYS: 1 queue, 2 stream, 3 the consumer's name lease
  ARGV: 1 epoch, 2 group, 3 consumer, 4 min_idle_ms
  Returns: 'pruned', or why not: 'live', 'pending', 'recent', 'missing'.
]]
local function sms_prune(keys, args)
  local queue, stream, lease = keys[1], keys[2], keys[3]
  local group, consumer, min_idle = args[2], args[3], tonumber(args[4])
  local err = first_error(
    function() return check_identity(queue, args[1]) end,
    function() return expect_type(stream, 'stream') end,
    function() return check_group(stream, group) end)
  if err then return err end
  if redis.call('EXISTS', lease) == 1 then return 'live' end
  for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
    local f = {}
    for i = 1, #row, 2 do f[row[i]] = row[i + 1] end
    if f['name'] == consumer then
      if f['pending'] > 0 then return 'pending' end
      if f['idle'] < min_idle then return 'recent' end
      redis.call('XGROUP', 'DELCONSUMER', stream, group, consumer)
      return 'pruned'
    end
  end
  return 'missing'
end

-- The entry id every group still needs, at the lowest: the lower of its
-- oldest pending entry and its last delivered one (kept: MINID removes only
-- entries below it). nil when the stream has no group.
local function trim_floor(stream)
  local floor = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    local needed = f['last-delivered-id']
    if f['pending'] > 0 then
      -- The oldest pending entry is normally below the last delivered one,
      -- but a group moved back (XGROUP SETID) delivers again from there.
      local oldest = redis.call('XPENDING', stream, f['name'])[2]
      if id_less(oldest, needed) then needed = oldest end
    end
    if floor == nil or id_less(needed, floor) then floor = needed end
  end
  return floor
end

--[[
  sms_trim: apply the queue's retention: remove settled entries older than
  retention_ms from the stream, and dead letters older than
  dead_retention_ms from the dead stream, counting what was removed.
  Safe for every consumer group: nothing at or above any group's oldest
  pending entry or last delivered entry is removed (MINID below the lowest of
  them), and only whole stream nodes go (`~`), at most TRIM_LIMIT entries
  per stream per call. Harmless when several processes trim at once.
  Allowed when Redis is out of memory: it only frees memory.
  KEYS: 1 queue, 2 stream, 3 the channel's dead stream, 4 stats (the
        queue's totals), [5 the channel's stats, where dead_trimmed is
        counted; the totals when absent]
  ARGV: 1 epoch, 2 group
  Returns: { trimmed, dead_trimmed }
]]
local function sms_trim(keys, args)
  local queue, stream, dead, stats = keys[1], keys[2], keys[3], keys[4]
  local chstats = keys[5] or stats
  local err = first_error(
    function() return check_identity(queue, args[1]) end,
    function() return expect_type(stream, 'stream') end,
    function() return expect_type(dead, 'stream', true) end,
    function() return expect_type(stats, 'hash') end,
    function() return expect_type(chstats, 'hash') end,
    function() return check_group(stream, args[2]) end,
    function() return check_counters(stats, { 'trimmed' }) end,
    function() return check_counters(chstats, { 'dead_trimmed' }) end)
  if err then return err end
  local retention = redis.call('HMGET', queue, 'retention_ms', 'dead_retention_ms')
  local keep, dead_keep = tonumber(retention[1] or '-1') or -1, tonumber(retention[2] or '-1') or -1
  local now = now_ms()
  local trimmed, dead_trimmed = 0, 0
  if keep >= 0 then
    local threshold = tostring(math.max(now - keep, 0)) .. '-0'
    local floor = trim_floor(stream)
    if floor ~= nil then
      if id_less(floor, threshold) then threshold = floor end
      trimmed = redis.call('XTRIM', stream, 'MINID', '~', threshold, 'LIMIT', TRIM_LIMIT)
    end
  end
  if dead_keep >= 0 and key_type(dead) == 'stream' then
    local threshold = tostring(math.max(now - dead_keep, 0)) .. '-0'
    dead_trimmed = redis.call('XTRIM', dead, 'MINID', '~', threshold, 'LIMIT', TRIM_LIMIT)
  end
  if trimmed > 0 then redis.call('HINCRBY', stats, 'trimmed', trimmed) end
  if dead_trimmed > 0 then redis.call('HINCRBY', chstats, 'dead_trimmed', dead_trimmed) end
  return { trimmed, dead_trimmed }
end

--[[
  sms_run_start: record a new producer run and take its liveness lease.
  KEYS: 1 queue, 2 runs (zset of run ids by start time), 3 open runs (set),
        4 the run's record (hash), 5 the run's lease
  ARGV: 1 epoch, 2 run id, 3 token, 4 lease_ms, 5 count, 6 seed, 7 batch,
        8 batches, 9 keep_ms (finished runs older than this leave `runs`),
        10 partitions the run routes over, 11 routing (how it picks them)
  Returns: 1, or an error starting BUSYRUN when the run id is taken.
  The partitions and routing are kept so that a resumed run sends each
  message where its first producer did, even if the queue grew since.
]]
local function sms_run_start(keys, args)
  local queue, runs, open, run, lease = keys[1], keys[2], keys[3], keys[4], keys[5]
  local err = first_error(
    function() return check_identity(queue, args[1]) end,
    function() return expect_type(runs, 'zset', true) end,
    function() return expect_type(open, 'set', true) end,
    function() return expect_type(lease, 'string', true) end)
  if err then return err end
  if key_type(run) ~= 'none' then
    return redis.error_reply('BUSYRUN producer run ' .. args[2] .. ' exists already')
  end
  local now = now_ms()
  redis.call('HSET', run, 'count', args[5], 'seed', args[6], 'batch', args[7],
             'batches', args[8], 'state', 'running', 'started_ms', tostring(now),
             'partitions', args[10], 'routing', args[11])
  redis.call('ZREMRANGEBYSCORE', runs, '-inf', '(' .. tostring(now - tonumber(args[9])))
  redis.call('ZADD', runs, now, args[2])
  redis.call('SADD', open, args[2])
  redis.call('SET', lease, args[3], 'PX', args[4])
  return 1
end

--[[
  sms_run_resume: take over a run whose producer is gone, to finish it.
  KEYS: 1 queue, 2 runs, 3 open runs, 4 the run's record, 5 the run's lease
  ARGV: 1 epoch, 2 run id, 3 token, 4 lease_ms
  Returns: the run's record as a flat list, or an error: NORUN (no such
  run), FINISHED (nothing left to do), BUSYRUN (its producer is alive).
]]
local function sms_run_resume(keys, args)
  local queue, runs, open, run, lease = keys[1], keys[2], keys[3], keys[4], keys[5]
  local err = first_error(
    function() return check_identity(queue, args[1]) end,
    function() return expect_type(runs, 'zset', true) end,
    function() return expect_type(open, 'set', true) end,
    function() return expect_type(run, 'hash', true) end,
    function() return expect_type(lease, 'string', true) end)
  if err then return err end
  if key_type(run) == 'none' then
    return redis.error_reply('NORUN no producer run ' .. args[2] .. ' in this queue')
  end
  if redis.call('HGET', run, 'state') == 'finished' then
    return redis.error_reply('FINISHED producer run ' .. args[2] .. ' has finished already')
  end
  local holder = redis.call('GET', lease)
  if holder and holder ~= args[3] then
    return redis.error_reply('BUSYRUN producer run ' .. args[2] ..
                             ' is held by a live producer (lease ' .. redis.call('PTTL', lease) .. ' ms)')
  end
  redis.call('SET', lease, args[3], 'PX', args[4])
  redis.call('HSET', run, 'state', 'running')
  redis.call('SADD', open, args[2])
  redis.call('ZADD', runs, 'NX', now_ms(), args[2])
  return redis.call('HGETALL', run)
end

--[[
  sms_run_end: end a producer run: `finished` when every batch is written,
  or `stopped` (interrupted; `produce --resume` finishes it later).
  KEYS: 1 queue, 2 open runs, 3 the run's record, 4 the run's lease,
        5 the run's written batches (hash: seq -> messages)
  ARGV: 1 epoch, 2 run id, 3 token, 4 state, 5 batches expected written,
        6 keep_ms (how long a finished run's record is kept)
  Returns: { 1 } when recorded; { 0, seq, ... } with the batches missing
  when fewer than expected are recorded written: they were lost.
]]
local function sms_run_end(keys, args)
  local queue, open, run, lease, batches = keys[1], keys[2], keys[3], keys[4], keys[5]
  local err = first_error(
    function() return check_identity(queue, args[1]) end,
    function() return expect_type(open, 'set', true) end,
    function() return expect_type(run, 'hash') end,
    function() return expect_type(lease, 'string', true) end,
    function() return expect_type(batches, 'hash', true) end)
  if err then return err end
  local expected = tonumber(args[5])
  if redis.call('HLEN', batches) < expected then
    local missing = { 0 }
    for seq = 1, expected do
      if redis.call('HEXISTS', batches, seq) == 0 then missing[#missing + 1] = seq end
    end
    return missing
  end
  local state = args[4]
  redis.call('HSET', run, 'state', state, 'ended_ms', tostring(now_ms()))
  if state == 'finished' then
    redis.call('SREM', open, args[2])
    redis.call('PEXPIRE', run, args[6])
    redis.call('PEXPIRE', batches, args[6])
  end
  if redis.call('GET', lease) == args[3] then redis.call('DEL', lease) end
  return { 1 }
end

--[[
  sms_requeue_to: move one channel's dead letters back into the stream, to be
  sent again by that channel only.
  KEYS: 1 queue, 2 stream, 3 the channel's dead stream, 4 stats (the queue's
        totals), 5 the channel's stats
  ARGV: 1 epoch, 2 the channel ('' from callers that leave the entry
        without a channel field), then dead-letter ids
  Returns: { requeued, id of each new stream entry ..., 'missing', ids not in
  the dead stream (or holding no message) ... }
  Each dead letter's original fields (those not starting 'dead_', and not an
  earlier `channel`) go back with field requeued_from naming the dead letter,
  which is deleted, and field `channel` naming the channel, so that the
  other channels, which settled the message already, skip it. Counted as
  `requeued` in the totals (produced + requeued = entries added still
  balances) and as `dead_requeued` in the channel's stats (its dead stream's
  own balance).
]]
local function sms_requeue_to(keys, args)
  local queue, stream, dead, stats, chstats = keys[1], keys[2], keys[3], keys[4], keys[5]
  local channel = args[2]
  local err = first_error(
    function() return check_identity(queue, args[1]) end,
    function() return expect_type(stream, 'stream') end,
    function() return expect_type(dead, 'stream', true) end,
    function() return expect_type(stats, 'hash') end,
    function() return expect_type(chstats, 'hash') end,
    function() return check_counters(stats, { 'requeued' }) end,
    function() return check_counters(chstats, { 'dead_requeued' }) end)
  if err then return err end
  -- Each dead letter is deleted as it is moved, before the next id is read:
  -- an id given twice is found once, so it goes back once.
  local added, missing = {}, {}
  for i = 3, #args do
    local fields = nil
    if key_type(dead) == 'stream' then fields = entry_fields(dead, args[i]) end
    local message = {}
    for j = 1, #(fields or {}), 2 do
      local name = fields[j]
      if string.sub(name, 1, 5) ~= 'dead_' and name ~= 'channel' and name ~= 'requeued_from' then
        message[#message + 1] = name
        message[#message + 1] = fields[j + 1]
      end
    end
    if #message == 0 then
      missing[#missing + 1] = args[i]
    else
      message[#message + 1] = 'requeued_from'
      message[#message + 1] = args[i]
      if channel ~= '' then
        message[#message + 1] = 'channel'
        message[#message + 1] = channel
      end
      added[#added + 1] = redis.call('XADD', stream, '*', unpack(message))
      redis.call('XDEL', dead, args[i])
    end
  end
  local out = { #added }
  for _, id in ipairs(added) do out[#out + 1] = id end
  if #added > 0 then
    redis.call('HINCRBY', stats, 'requeued', #added)
    redis.call('HINCRBY', chstats, 'dead_requeued', #added)
  end
  out[#out + 1] = 'missing'
  for _, id in ipairs(missing) do out[#out + 1] = id end
  return out
end

--[[
  sms_requeue: sms_requeue_to for callers from before channels.
  KEYS: 1 queue, 2 stream, 3 dead stream, 4 stats
  ARGV: 1 epoch, then dead-letter ids
  Returns: as sms_requeue_to.
]]
local function sms_requeue(keys, args)
  local to_args = { args[1], '' }
  for i = 2, #args do to_args[#to_args + 1] = args[i] end
  return sms_requeue_to({ keys[1], keys[2], keys[3], keys[4], keys[4] }, to_args)
end

--[[
  sms_channel: give one partition a channel: its consumer group on the
  stream and its stats hash.
  KEYS: 1 queue, 2 stream, 3 the channel's stats
  ARGV: 1 epoch, 2 group (the channel's name), 3 where a new group starts:
        '$' (the current end: messages already in the stream are not the
        new channel's) or '0' (the entries the stream still holds),
        4 '1' when the queue records no channels yet, so that a group
        without a stats hash is one from before channels, adopted with
        empty counters; '0' when the list is recorded (absent: '1')
  Returns: 'created' or 'existing'.
  A new channel's stats hash records what came before it, for its
  reconciliation: base_added, the entries added to the stream that it will
  never see.
  A channel whose group is gone while its stats hash remains lost its
  pending messages and its place in the stream; one whose stats hash is
  gone while its group remains (on a queue that records its channels) lost
  its counts: both are damage, refused here (creating either again would
  send, skip or count by guess).
]]
local function sms_channel(keys, args)
  local queue, stream, chstats = keys[1], keys[2], keys[3]
  local group, start = args[2], args[3]
  local err = first_error(
    function() return check_identity(queue, args[1]) end,
    function() return expect_type(stream, 'stream') end,
    function() return expect_type(chstats, 'hash', true) end)
  if err then return err end
  if start ~= '$' and start ~= '0' then
    return redis.error_reply("ERR sms_channel: start " .. shown(start) .. " is not '$' or '0'")
  end
  if group_exists(stream, group) then
    if key_type(chstats) == 'hash' then return 'existing' end
    if args[4] == '0' then
      return damaged(chstats .. ' is missing while the group ' .. group .. ' of ' .. stream ..
                     ' remains: the channel\'s counts are lost')
    end
    redis.call('HSET', chstats, 'sent', '0')
    return 'existing'
  end
  if key_type(chstats) == 'hash' then return check_group(stream, group) end
  local info = redis.call('XINFO', 'STREAM', stream)
  local added, length = 0, 0
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then added = info[i + 1] end
    if info[i] == 'length' then length = info[i + 1] end
  end
  local unseen = added
  if start == '0' then unseen = added - length end
  redis.call('XGROUP', 'CREATE', stream, group, start)
  redis.call('HSET', chstats, 'sent', '0', 'base_added', tostring(unseen))
  return 'created'
end

--[[
  sms_channels: record the queue's channels, in partition 0's queue hash
  (field `channels`: name:kind pairs, comma-separated, the first channel
  first). `migrate` gives every partition the channel first, and records it
  here last. A channel is never taken away: its group holds what it has not
  settled.
  KEYS: 1 queue (of partition 0)
  ARGV: 1 epoch, 2 the list
  Returns: 'recorded' or 'unchanged'. Refuses with SHRINK when the list
  recorded is not where the new one starts.
]]
local function sms_channels(keys, args)
  local queue, list = keys[1], args[2]
  local err = check_identity(queue, args[1])
  if err then return err end
  local current = redis.call('HGET', queue, 'channels')
  if current == list then return 'unchanged' end
  if current and string.sub(list, 1, #current + 1) ~= current .. ',' then
    return redis.error_reply('SHRINK ' .. current)
  end
  redis.call('HSET', queue, 'channels', list)
  return 'recorded'
end

--[[
  sms_dead_purge: remove dead letters older than a given id, counted as
  dead_purged. At most TRIM_LIMIT per call (whole nodes first, then at most
  PURGE_EXACT one by one): the caller repeats until a call returns 0.
  KEYS: 1 queue, 2 dead stream, 3 stats
  ARGV: 1 epoch, 2 min_id (entries below it go)
  Returns: the number of dead letters removed.
]]
local function sms_dead_purge(keys, args)
  local queue, dead, stats = keys[1], keys[2], keys[3]
  local err = first_error(
    function() return check_identity(queue, args[1]) end,
    function() return expect_type(dead, 'stream', true) end,
    function() return expect_type(stats, 'hash') end,
    function() return check_counters(stats, { 'dead_purged' }) end)
  if err then return err end
  if key_type(dead) ~= 'stream' then return 0 end
  local n = redis.call('XTRIM', dead, 'MINID', '~', args[2], 'LIMIT', TRIM_LIMIT)
  if n == 0 then
    local rest = redis.call('XRANGE', dead, '-', '(' .. args[2], 'COUNT', PURGE_EXACT)
    for _, entry in ipairs(rest) do n = n + redis.call('XDEL', dead, entry[1]) end
  end
  if n > 0 then redis.call('HINCRBY', stats, 'dead_purged', n) end
  return n
end

--[[
  sms_partitions: set the queue's partition count, kept in partition 0's
  queue hash (field `partitions`; absent means 1). `migrate` creates the new
  partitions first, each with this epoch, and calls this last, so no process
  ever reads a count that names a partition not created yet. A count only
  grows: a partition that goes away would take its messages with it.
  KEYS: 1 queue (of partition 0)
  ARGV: 1 epoch, 2 partition count
  Returns: the count before the call. Refuses with SHRINK <count now>.
]]
local function sms_partitions(keys, args)
  local queue = keys[1]
  local err = check_identity(queue, args[1])
  if err then return err end
  local wanted = tonumber(args[2])
  if not wanted or wanted < 1 or wanted ~= math.floor(wanted) then
    return redis.error_reply('ERR partition count ' .. tostring(args[2]) .. ' is not a whole number above 0')
  end
  local current = redis.call('HGET', queue, 'partitions')
  local now = 1
  if current then
    now = tonumber(current)
    if not now then return damaged(queue .. ' partitions is ' .. shown(current) .. ', not a number') end
  end
  if wanted < now then return redis.error_reply('SHRINK ' .. now) end
  if wanted > now then redis.call('HSET', queue, 'partitions', wanted) end
  return now
end

--[[
  sms_ingest: add the messages one HTTP request brings to one partition and
  count them, atomically; with an idempotency record, at most once per
  request, answering a repeat with the ids of the first.
  KEYS: 1 queue, 2 stream, 3 stats, [4 idempotency record]
  ARGV: 1 epoch, 2 the request's fingerprint, 3 the record's ttl_ms,
        then per message: its number of field/value pairs, then the pairs.
  Returns: { 'written', id... } | { 'replayed', id... } | { 'mismatch' }
  The record (a string: the fingerprint, a newline, the ids separated by
  spaces) is written with the messages, so a request whose reply was lost
  and that is sent again finds it and adds nothing. The same key with
  another fingerprint is another request reusing the key: 'mismatch', and
  nothing is written.
]]
local function sms_ingest(keys, args)
  local queue, stream, stats, record = keys[1], keys[2], keys[3], keys[4]
  local err = first_error(
    function() return check_identity(queue, args[1]) end,
    function() return expect_type(stream, 'stream') end,
    function() return expect_type(stats, 'hash') end,
    function() return check_counters(stats, { 'produced' }) end,
    function() return record and expect_type(record, 'string', true) end)
  if err then return err end
  local ttl = tonumber(args[3])
  if record and (not ttl or ttl < 1 or ttl > 2592000000 or ttl ~= math.floor(ttl)) then
    return redis.error_reply('ERR sms_ingest: the record ttl ' .. shown(args[3]) ..
                             ' is not 1 to 2592000000 ms')
  end
  local i = 4
  while i <= #args do
    local n = tonumber(args[i])
    if not n or n < 1 or n ~= math.floor(n) or i + 2 * n > #args then
      return redis.error_reply('ERR sms_ingest: message fields do not add up at argument ' .. i)
    end
    i = i + 1 + 2 * n
  end
  local fingerprint = args[2]
  if record then
    local kept = redis.call('GET', record)
    if kept then
      local newline = string.find(kept, '\n', 1, true)
      if not newline or string.sub(kept, 1, newline - 1) ~= fingerprint then
        return { 'mismatch' }
      end
      local reply = { 'replayed' }
      for id in string.gmatch(string.sub(kept, newline + 1), '%S+') do reply[#reply + 1] = id end
      return reply
    end
  end
  local reply = { 'written' }
  i = 4
  while i <= #args do
    local pairs_count = tonumber(args[i])
    reply[#reply + 1] = redis.call('XADD', stream, '*', unpack(args, i + 1, i + 2 * pairs_count))
    i = i + 1 + 2 * pairs_count
  end
  redis.call('HINCRBY', stats, 'produced', #reply - 1)
  if record then
    redis.call('SET', record, fingerprint .. '\n' .. table.concat(reply, ' ', 2), 'PX', args[3])
  end
  return reply
end

--[[
  sms_gateway_take: take up to `want` tokens from a gateway's bucket, the
  throughput cap every sender of that gateway shares, in any process.
  KEYS: 1 queue, 2 the gateway's bucket (a hash)
  ARGV: 1 epoch, 2 rate (tokens per second), 3 burst (most tokens the
        bucket holds), 4 want
  Returns: { granted, ms until the next token when fewer were granted }
  The bucket fills at `rate` from Redis's own clock, so every sender sees
  the same time; it holds milli-tokens (field `mtokens`) and the time of
  its last fill in microseconds (`at_us`), integers. A bucket left unused
  for a minute expires: it would be full by then anyway.
  Allowed when Redis is out of memory: senders must go on settling
  messages, which is what frees memory.
]]
local function sms_gateway_take(keys, args)
  local queue, bucket = keys[1], keys[2]
  local rate, burst, want = tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
  local err = first_error(
    function() return check_identity(queue, args[1]) end,
    function() return expect_type(bucket, 'hash', true) end,
    function() return check_counters(bucket, { 'mtokens', 'at_us' }) end)
  if err then return err end
  if not rate or rate <= 0 or not burst or burst < 1 or not want or want < 0 then
    return redis.error_reply('ERR sms_gateway_take: rate ' .. shown(args[2]) .. ', burst ' ..
                             shown(args[3]) .. ' or want ' .. shown(args[4]) .. ' is not valid')
  end
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local kept = redis.call('HMGET', bucket, 'mtokens', 'at_us')
  local full = burst * 1000
  local mtokens, at_us = full, now_us
  if kept[1] and kept[2] then
    at_us = tonumber(kept[2])
    mtokens = math.min(full, tonumber(kept[1]) + math.floor((now_us - at_us) * rate / 1000))
    if mtokens < 0 then mtokens = 0 end
  end
  local granted = math.min(want, math.floor(mtokens / 1000))
  mtokens = mtokens - granted * 1000
  redis.call('HSET', bucket, 'mtokens', string.format('%d', mtokens), 'at_us', string.format('%d', now_us))
  redis.call('PEXPIRE', bucket, 60000)
  local wait_ms = 0
  if granted < want then
    wait_ms = math.ceil((1000 - mtokens % 1000) / rate)
  end
  return { granted, wait_ms }
end

--[[
  sms_sender_state: publish what a sender's gateway is doing, in the
  sender's hash of partition 0, for the monitor.
  KEYS: 1 queue, 2 stats:<consumer>
  ARGV: 1 epoch, 2 gateway name, 3 breaker state (closed, open,
        half_open), 4 1 when the breaker opened now (counted in
        breaker_opened), else 0
  Returns: 1
]]
local function sms_sender_state(keys, args)
  local queue, cstats = keys[1], keys[2]
  local err = first_error(
    function() return check_identity(queue, args[1]) end,
    function() return expect_type(cstats, 'hash', true) end,
    function() return check_counters(cstats, { 'breaker_opened' }) end)
  if err then return err end
  redis.call('HSET', cstats, 'gateway', args[2], 'breaker', args[3])
  if args[4] == '1' then redis.call('HINCRBY', cstats, 'breaker_opened', 1) end
  return 1
end

--[[
  sms_pause: pause or resume a channel's sending, in partition 0's queue
  hash (field paused:<channel>); senders of the channel look at it often.
  KEYS: 1 queue (of partition 0)
  ARGV: 1 epoch, 2 channel, 3 '1' to pause, '0' to resume
  Returns: 1 if that changed anything, else 0.
]]
local function sms_pause(keys, args)
  local queue = keys[1]
  local err = check_identity(queue, args[1])
  if err then return err end
  local field = 'paused:' .. args[2]
  if args[3] == '1' then
    return redis.call('HSETNX', queue, field, tostring(now_ms()))
  end
  return redis.call('HDEL', queue, field)
end

--[[
  sms_version: the version of this library, so that a binary loads it only
  over an older one and never replaces a newer one.
  KEYS: none
  ARGV: none
  Returns: LIBRARY_VERSION
]]
local function sms_version()
  return LIBRARY_VERSION
end

redis.register_function('sms_create', sms_create)
redis.register_function('sms_report', sms_report)
redis.register_function('sms_settle', sms_settle)
redis.register_function('sms_requeue_to', sms_requeue_to)
redis.register_function('sms_channel', sms_channel)
redis.register_function('sms_channels', sms_channels)
redis.register_function('sms_sender_state', sms_sender_state)
redis.register_function('sms_pause', sms_pause)
redis.register_function { function_name = 'sms_gateway_take', callback = sms_gateway_take, flags = { 'allow-oom' } }
redis.register_function('sms_claim', sms_claim)
redis.register_function('sms_renew', sms_renew)
redis.register_function('sms_prune', sms_prune)
redis.register_function('sms_run_start', sms_run_start)
redis.register_function('sms_run_resume', sms_run_resume)
redis.register_function('sms_run_end', sms_run_end)
redis.register_function('sms_requeue', sms_requeue)
redis.register_function('sms_dead_purge', sms_dead_purge)
redis.register_function('sms_partitions', sms_partitions)
redis.register_function('sms_ingest', sms_ingest)
redis.register_function { function_name = 'sms_trim', callback = sms_trim, flags = { 'allow-oom' } }
redis.register_function { function_name = 'sms_hold_name', callback = sms_hold_name, flags = { 'allow-oom' } }
redis.register_function { function_name = 'sms_release_name', callback = sms_release_name, flags = { 'allow-oom' } }
redis.register_function { function_name = 'sms_snapshot', callback = sms_snapshot, flags = { 'no-writes' } }
redis.register_function { function_name = 'sms_version', callback = sms_version, flags = { 'no-writes' } }
