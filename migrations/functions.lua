#!lua name=sms_alerts
--[[
  sms-alerts Redis Functions library.

  FUNCTION LOAD replaces a whole library, so this one file is the library and
  LIBRARY_VERSION is its version; every migration step that changes it bumps
  the version (see MIGRATIONS in src/store/migrate.rs):
    1  0001_functions     sms_report, sms_claim, sms_renew, sms_hold_name,
                          sms_release_name, sms_snapshot, sms_version
    2  0002_sender_prune  sms_prune
    3  0003_latency_histogram
                          sms_report also counts send times into histogram
                          buckets (KEYS[5]); sms_snapshot returns them
    4  0004_report_bucket_names
                          bucket field names built once at load: formatting
                          a number per result showed in the drain profile
    5  0005_report_bulk_ack
                          sms_report takes the ids grouped by outcome and the
                          send times already bucketed by the sender, and
                          acknowledges the successes with one XACK per chunk
                          of ids instead of one per id (each XACK is also an
                          AOF record): the drain profile showed the per-result
                          Lua work and XACKs; a window of applied batch
                          seqs lets a sender have several reports in flight
    6  0006_produce_function
                          sms_produce: a producer batch is written only if
                          its (run, seq) marker is new, checked and set in the
                          same atomic call. Before, the producer checked the
                          marker and then wrote again; a batch still queued
                          in Redis behind a timed-out reply landed twice

  Every multi-step update that must be atomic runs here, server-side:
  acknowledging and counting a batch of send results, claiming stale work or
  dead-lettering it, renewing leases, and reading a consistent snapshot for
  the monitor. Every key a function touches is passed in KEYS and all of them
  share one hash tag (e.g. {sms:0}), so the library runs unchanged on Redis
  Cluster.

  Counters live in two hashes: the totals (`stats`) and one per sender
  (`stats:<consumer>`). Fields, all integers:
    sent          messages acknowledged for the first time (XACK returned 1)
    duplicates    successful sends of a message someone had already settled
    failed        failed send attempts
    attempts      send attempts of any outcome
    send_time_us  sum of the simulated send times of all attempts
    dead          messages moved to the dead stream
    dead_<reason> the same, by reason (max_attempts, malformed, deleted)
]]

local LIBRARY_VERSION = 6

-- Upper bounds (microseconds) of the send-time histogram buckets; the last
-- bucket, 'le_inf', takes the rest. Fields of the latency hash: le_<bound>.
local LATENCY_BOUNDS = { 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000,
                         500000, 1000000, 2000000, 5000000, 10000000 }

-- The latency hash's field of each bucket, 'le_inf' last. Built at load,
-- where only plain Lua is available (no ipairs yet).
local BUCKET_NAMES = {}
for i = 1, #LATENCY_BOUNDS do BUCKET_NAMES[i] = 'le_' .. LATENCY_BOUNDS[i] end
BUCKET_NAMES[#LATENCY_BOUNDS + 1] = 'le_inf'

-- A dead-letter entry keeps at most this many original field/value pairs, so
-- that a poison entry with thousands of fields cannot overflow Lua's stack.
local MAX_DEAD_FIELDS = 64

-- Report batches of one sender process remembered below its highest one;
-- a sender has far fewer in flight. 32: the width of Lua's bit operations.
local BATCH_WINDOW = 32

-- Most ids passed to one XACK: unpack() puts each on Lua's C stack, which
-- holds 8000 slots.
local ACK_CHUNK = 1000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Fields of a stream entry as a flat list, or nil when the entry is gone.
local function entry_fields(stream, id)
  local found = redis.call('XRANGE', stream, id, id)
  if #found == 0 then return nil end
  return found[1][2]
end

-- Moves one pending entry to the dead stream and acknowledges it. Returns 1
-- if it did, 0 if the entry was no longer pending (already settled by someone
-- else), so a message can never be dead-lettered twice.
local function dead_letter(stream, dead, group, id, reason, attempts, consumer)
  if redis.call('XACK', stream, group, id) == 0 then return 0 end
  local fields = entry_fields(stream, id) or {}
  local args = { dead, '*' }
  local pairs_kept = math.min(#fields, MAX_DEAD_FIELDS * 2)
  for i = 1, pairs_kept do args[#args + 1] = fields[i] end
  if pairs_kept < #fields then
    args[#args + 1] = 'dead_truncated_fields'
    args[#args + 1] = tostring((#fields - pairs_kept) / 2)
  end
  for _, v in ipairs({
    'dead_reason', reason,
    'dead_attempts', tostring(attempts),
    'dead_consumer', consumer,
    'dead_message_id', id,
    'dead_at_ms', tostring(now_ms()),
  }) do args[#args + 1] = v end
  redis.call('XADD', unpack(args))
  return 1
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

--[[
  sms_report: acknowledge and count a batch of send results, atomically.
  KEYS: 1 stream, 2 dead stream, 3 stats, 4 stats:<consumer>, 5 latency histogram
  ARGV: 1 group, 2 consumer, 3 max_attempts, 4 retry_idle_ms,
        5 batch_token, 6 batch_seq,
        7 n_ok, 8 n_fail, 9 n_malformed,
        10 send_time_us: the summed send times of the ok and failed attempts,
        11 .. 10 + #BUCKET_NAMES: those attempts counted per histogram
          bucket, in BUCKET_NAMES order,
        then the ids: n_ok successes, then n_fail failures, then n_malformed
        malformed entries.
  Returns: { sent, duplicates, failed, dead, replayed }
  Successes are acknowledged with one XACK per ACK_CHUNK ids (each XACK is
  also one AOF record): those XACK acknowledged count as sent, the rest as
  duplicates (someone settled them already). A failure stays pending with its
  idle time set to retry_idle_ms, so it becomes claimable after
  (lease - retry_idle) = the retry backoff; at max_attempts deliveries it is
  dead-lettered instead. The sender buckets the send times it measured, so
  the per-result work here is only the Redis commands each result needs.
  (batch_token, batch_seq) make a retried call idempotent: a batch whose reply
  was lost is not applied twice. The sender's hash keeps the highest seq
  applied and a bitmap of the BATCH_WINDOW seqs below it, so batches may be
  applied out of order (several are in flight, and a failed one is retried
  after later ones landed) and each still applies exactly once.
]]
local function sms_report(keys, args)
  local stream, dead, stats, cstats = keys[1], keys[2], keys[3], keys[4]
  local group, consumer = args[1], args[2]
  local max_attempts, retry_idle = tonumber(args[3]), args[4]
  local token, seq = args[5], tonumber(args[6])

  local last = redis.call('HMGET', cstats, 'batch_token', 'batch_seq', 'batch_window')
  local high, window = 0, 0
  if last[1] == token then
    high = tonumber(last[2]) or 0
    -- Written before the window existed: only the highest batch is known.
    window = tonumber(last[3]) or 1
  end
  if seq <= high then
    local back = high - seq
    if back >= BATCH_WINDOW or bit.band(window, bit.lshift(1, back)) ~= 0 then
      return { 0, 0, 0, 0, 1 }
    end
  end

  local n_ok, n_fail, n_malformed = tonumber(args[7]), tonumber(args[8]), tonumber(args[9])
  local d = { sent = 0, duplicates = 0, failed = n_fail, attempts = n_ok + n_fail,
              send_time_us = tonumber(args[10]), dead = 0, dead_max_attempts = 0,
              dead_deleted = 0, dead_malformed = 0 }
  local buckets_at = 11
  local ids_at = buckets_at + #BUCKET_NAMES

  local ok_end = ids_at + n_ok - 1
  for first = ids_at, ok_end, ACK_CHUNK do
    local last_id = math.min(first + ACK_CHUNK - 1, ok_end)
    d.sent = d.sent + redis.call('XACK', stream, group, unpack(args, first, last_id))
  end
  d.duplicates = n_ok - d.sent

  for i = ok_end + 1, ok_end + n_fail do
    local id = args[i]
    local row = pending_row(stream, group, id)
    -- Not pending any more, or reclaimed by another sender: its fate is
    -- theirs now; only the failed attempt is ours to count.
    if row and row.owner == consumer then
      if entry_fields(stream, id) == nil then
        local n = dead_letter(stream, dead, group, id, 'deleted', row.deliveries, consumer)
        d.dead, d.dead_deleted = d.dead + n, d.dead_deleted + n
      elseif row.deliveries >= max_attempts then
        local n = dead_letter(stream, dead, group, id, 'max_attempts', row.deliveries, consumer)
        d.dead, d.dead_max_attempts = d.dead + n, d.dead_max_attempts + n
      else
        redis.call('XCLAIM', stream, group, consumer, 0, id, 'IDLE', retry_idle, 'JUSTID')
      end
    end
  end

  for i = ok_end + n_fail + 1, ok_end + n_fail + n_malformed do
    local id = args[i]
    local row = pending_row(stream, group, id)
    local deliveries = 0
    if row then deliveries = row.deliveries end
    local n = dead_letter(stream, dead, group, id, 'malformed', deliveries, consumer)
    d.dead, d.dead_malformed = d.dead + n, d.dead_malformed + n
  end

  count(stats, cstats, d)
  if keys[5] then
    for i = 1, #BUCKET_NAMES do
      local n = tonumber(args[buckets_at + i - 1])
      if n ~= 0 then
        redis.call('HINCRBY', keys[5], BUCKET_NAMES[i], n)
      end
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
  return { d.sent, d.duplicates, d.failed, d.dead, 0 }
end

--[[
  sms_claim: take over pending entries idle for at least min_idle_ms, or
  dead-letter them when they have used up their attempts.
  KEYS: 1 stream, 2 dead stream, 3 stats, 4 stats:<consumer>
  ARGV: 1 group, 2 consumer, 3 min_idle_ms, 4 start id (a cursor: '-' or
        '(<id>'), 5 count, 6 max_attempts,
        7 owner: '' for any consumer, or one consumer's name (a restarted
          sender recovering its own pending list, with min_idle_ms 0)
  Returns: { next_cursor ('0' when the scan reached the end), dead,
             { id, deliveries, { field, value, ... } }, ... }
  `deliveries` counts this claim: it is the attempt the claimer now makes.
  An entry deleted from the stream while pending is dead-lettered with
  reason 'deleted', so it is accounted for instead of vanishing.
]]
local function sms_claim(keys, args)
  local stream, dead, stats, cstats = keys[1], keys[2], keys[3], keys[4]
  local group, consumer, min_idle = args[1], args[2], args[3]
  local start, batch, max_attempts, owner = args[4], tonumber(args[5]), tonumber(args[6]), args[7]

  local query = { 'XPENDING', stream, group, 'IDLE', min_idle, start, '+', batch }
  if owner ~= '' then query[#query + 1] = owner end
  local rows = redis.call(unpack(query))

  local d = { dead = 0, dead_max_attempts = 0, dead_deleted = 0 }
  local claimed = {}
  for _, row in ipairs(rows) do
    local id, holder, deliveries = row[1], row[2], tonumber(row[4])
    local n = 0
    if entry_fields(stream, id) == nil then
      n = dead_letter(stream, dead, group, id, 'deleted', deliveries, holder)
      d.dead_deleted = d.dead_deleted + n
    elseif deliveries >= max_attempts then
      n = dead_letter(stream, dead, group, id, 'max_attempts', deliveries, holder)
      d.dead_max_attempts = d.dead_max_attempts + n
    else
      local got = redis.call('XCLAIM', stream, group, consumer, min_idle, id)
      if #got == 1 then
        claimed[#claimed + 1] = { id, deliveries + 1, got[1][2] }
      end
    end
    d.dead = d.dead + n
  end
  count(stats, cstats, d)

  local cursor = '0'
  if #rows == batch then cursor = '(' .. rows[#rows][1] end
  return { cursor, d.dead, unpack(claimed) }
end

--[[
  sms_renew: extend the lease of entries this sender is still working on, by
  resetting their idle time, so other senders do not reclaim live work.
  KEYS: 1 stream
  ARGV: 1 group, 2 consumer, then ids
  Returns: the ids that are no longer this sender's (settled or reclaimed).
]]
local function sms_renew(keys, args)
  local stream, group, consumer = keys[1], args[1], args[2]
  local lost = {}
  for i = 3, #args do
    local id = args[i]
    local row = pending_row(stream, group, id)
    -- XCLAIM drops a deleted entry from the pending list; leave those for
    -- sms_report / sms_claim to account for.
    if row and row.owner == consumer and entry_fields(stream, id) ~= nil then
      redis.call('XCLAIM', stream, group, consumer, 0, id, 'JUSTID')
    else
      lost[#lost + 1] = id
    end
  end
  return lost
end

--[[
  sms_hold_name: take or renew a sender's liveness lease on its name.
  KEYS: 1 the name's lease key
  ARGV: 1 token of this process, 2 ttl_ms
  Returns: { 1, ttl_ms } when this process holds the name,
           { 0, remaining_ttl_ms } when another live process does.
]]
local function sms_hold_name(keys, args)
  local key, token, ttl = keys[1], args[1], args[2]
  local holder = redis.call('GET', key)
  if holder == false or holder == token then
    redis.call('SET', key, token, 'PX', ttl)
    return { 1, tonumber(ttl) }
  end
  return { 0, redis.call('PTTL', key) }
end

--[[
  sms_release_name: give a sender's name back on a clean exit.
  KEYS: 1 the name's lease key
  ARGV: 1 token of this process
  Returns: 1 if released, 0 if the name was not held by this process.
]]
local function sms_release_name(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    return redis.call('DEL', keys[1])
  end
  return 0
end

--[[
  sms_snapshot: everything the monitor shows, read in one consistent call.
  KEYS: 1 stream, 2 dead stream, 3 stats, 4 latency histogram (optional)
  ARGV: 1 group
  Returns: a flat list of name, integer pairs: the stats hash's fields, plus
  entries_added, length, group_exists, pending, lag (-1 when Redis does not
  know it), dead_length, and latency_le_<bound> per histogram bucket.
]]
local function sms_snapshot(keys, args)
  local stream, dead, stats, group = keys[1], keys[2], keys[3], args[1]
  local out = redis.call('HGETALL', stats)
  local function put(name, value)
    out[#out + 1] = name
    out[#out + 1] = value
  end

  local info = redis.pcall('XINFO', 'STREAM', stream)
  local added, length = 0, 0
  if type(info) == 'table' and not info.err then
    for i = 1, #info, 2 do
      if info[i] == 'entries-added' then added = info[i + 1] end
      if info[i] == 'length' then length = info[i + 1] end
    end
  end
  put('entries_added', added)
  put('length', length)

  local exists, pending, lag = 0, 0, -1
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if type(groups) == 'table' and not groups.err then
    for _, g in ipairs(groups) do
      local fields = {}
      for i = 1, #g, 2 do fields[g[i]] = g[i + 1] end
      if fields['name'] == group then
        exists, pending = 1, fields['pending']
        if type(fields['lag']) == 'number' then lag = fields['lag'] end
      end
    end
  end
  put('group_exists', exists)
  put('pending', pending)
  put('lag', lag)
  put('dead_length', redis.call('XLEN', dead))
  if keys[4] then
    local hist = redis.call('HGETALL', keys[4])
    for i = 1, #hist, 2 do put('latency_' .. hist[i], tonumber(hist[i + 1])) end
  end
  return out
end

--[[
  sms_prune: remove a consumer from the group, only if that loses nothing:
  no live process holds its name, it has no pending entries (XGROUP
  DELCONSUMER would drop them, unclaimable), and it has been idle long enough.
  Checked and done in one atomic call, so nothing can change in between.
  KEYS: 1 stream, 2 the consumer's name lease
  ARGV: 1 group, 2 consumer, 3 min_idle_ms
  Returns: 'pruned', or why not: 'live', 'pending', 'recent', 'missing'.
]]
local function sms_prune(keys, args)
  local stream, lease = keys[1], keys[2]
  local group, consumer, min_idle = args[1], args[2], tonumber(args[3])
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

--[[
  sms_produce: add one producer batch to the stream exactly once.
  No longer called: producers since the change after version 6 write a batch
  as MULTI/EXEC fenced by WATCH (src/store/batches.rs), which costs Redis
  about 2 us less per message than a redis.call per entry. Kept so that
  producers of the previous release still work against a Redis this one has
  migrated; the same run hash marks the batches either way. A later library
  version may drop it.
  KEYS: 1 stream, 2 stats, 3 the producer run's hash of written batches
  ARGV: 1 seq (the batch's number in the run), 2 ttl_s of the run hash,
        3..5 the field names of recipient, body and created_ms,
        then recipient, body, created_ms of each message
  Returns: the messages added, or -1 when batch seq was already written (a
  retry of a batch whose first try landed, or the first try landing after
  its retry did). Checking the marker and adding the entries in one call is
  what makes a retry safe however late the first try is executed.
]]
local function sms_produce(keys, args)
  local stream, stats, run = keys[1], keys[2], keys[3]
  local n = (#args - 5) / 3
  if redis.call('HSETNX', run, args[1], n) == 0 then return -1 end
  redis.call('EXPIRE', run, args[2])
  local f_recipient, f_body, f_created = args[3], args[4], args[5]
  for i = 6, #args, 3 do
    redis.call('XADD', stream, '*', f_recipient, args[i], f_body, args[i + 1],
               f_created, args[i + 2])
  end
  redis.call('HINCRBY', stats, 'produced', n)
  return n
end

local function sms_version()
  return LIBRARY_VERSION
end

redis.register_function('sms_report', sms_report)
redis.register_function('sms_claim', sms_claim)
redis.register_function('sms_renew', sms_renew)
redis.register_function('sms_hold_name', sms_hold_name)
redis.register_function('sms_release_name', sms_release_name)
redis.register_function('sms_prune', sms_prune)
redis.register_function('sms_produce', sms_produce)
redis.register_function { function_name = 'sms_snapshot', callback = sms_snapshot, flags = { 'no-writes' } }
redis.register_function { function_name = 'sms_version', callback = sms_version, flags = { 'no-writes' } }
