-- wrk-writes.lua: tally writes from wrk, a load generator in C, to compare load generators
-- (docs/performance.md, "At one client"). Every request is a new transaction: a fresh uid, a
-- user drawn from 1..1000, deposits and withdrawals of 1.00 in turn. The users must exist,
-- with funds: on a fresh database, a short `tally bench --users 1000` run creates them.
--
--   wrk -t2 -c16 -d8s -s bench/wrk-writes.lua http://127.0.0.1:18080
--
-- wrk checks no answers and --verify cannot audit its writes: the figure is writes/s only.
local counter = 0
local prefix = ""

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  prefix = string.format("%08x", math.random(0, 0x7fffffff))
end

request = function()
  counter = counter + 1
  local uid = string.format("%s-0000-4000-8000-%012x", prefix, counter)
  local kind = (counter % 2 == 0) and "DEPOSIT" or "WITHDRAW"
  local body = string.format('{"uid":"%s","user_id":%d,"type":"%s","amount":"1.00"}',
    uid, math.random(1, 1000), kind)
  return wrk.format("POST", "/v1/transaction", {["Content-Type"] = "application/json"}, body)
end
