-- Argo CD health check for gpushopper.dev/GpuSession. Install it as
-- resource.customizations.health.gpushopper.dev_GpuSession in argocd-cm
-- (docs/gitops.md). `obj` is the session; the result is Argo CD's hs table.
local hs = { status = "Progressing", message = "waiting for the operator to see this session" }

local function condition(status, type_)
  if status == nil or status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then return c end
  end
  return nil
end

local function say(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then return c.message end
  return fallback
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.message = "being deleted: its machine is destroyed and confirmed gone before the session goes"
  return hs
end
local st = obj.status
if st == nil then return hs end
if st.observedGeneration ~= nil and obj.metadata ~= nil and obj.metadata.generation ~= nil
    and st.observedGeneration < obj.metadata.generation then
  hs.message = "waiting for the operator to act on the latest spec"
  return hs
end

local ready = condition(st, "Ready")
local complete = condition(st, "Complete")
local failed = condition(st, "Failed")
if failed ~= nil and failed.status == "True" or st.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = say(failed, st.message or "the session failed")
elseif complete ~= nil and complete.status == "True" or st.phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "finished: " .. say(complete, st.message or "ended as intended")
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = say(ready, "ready")
elseif ready ~= nil and ready.status == "False" and ready.reason == "NoMatchingOffers" then
  -- Waiting on the market, not broken: it rents as soon as an offer matches.
  hs.status = "Suspended"
  hs.message = say(ready, "waiting for a matching offer")
elseif ready ~= nil and ready.status == "False" then
  -- Cannot become ready without a change (credentials, a filter, a Secret in the way).
  hs.status = "Degraded"
  hs.message = say(ready, "cannot become ready")
else
  hs.message = say(ready, st.message or "shopping and proving a machine")
end
return hs
