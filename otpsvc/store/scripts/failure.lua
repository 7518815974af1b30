-- Count one wrong code against the number's daily failure caps (a new code never resets them).
-- KEYS[1]  this client's failed checks of the number     KEYS[2]  every client's (same hash tag)
-- ARGV[1]  how long a count lives, ms (from its first failure)
for i = 1, 2 do
  if redis.call('INCR', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
return 1
