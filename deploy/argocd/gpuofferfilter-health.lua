-- Argo CD health check for gpushopper.dev/GpuOfferFilter. Install it as
-- resource.customizations.health.gpushopper.dev_GpuOfferFilter in argocd-cm
-- (docs/gitops.md). A filter is healthy once the market was searched for its
-- current spec; no marketplace searchable at all is Degraded.
local hs = { status = "Progressing", message = "waiting for the first market search" }
local st = obj.status
if st == nil then return hs end
if st.observedGeneration == nil or (obj.metadata ~= nil and obj.metadata.generation ~= nil
    and st.observedGeneration < obj.metadata.generation) then
  hs.message = "waiting for the market search of the latest spec"
  return hs
end
local searched = nil
for _, c in ipairs(st.conditions or {}) do
  if c.type == "MarketSearched" then searched = c end
end
if searched == nil then return hs end
if searched.status == "True" then
  hs.status = "Healthy"
  hs.message = string.format("%d matching offers", st.matchingOffers or 0)
elseif searched.reason == "SomeProvidersFailed" then
  -- One marketplace down is the market's weather, not this filter's fault.
  hs.status = "Healthy"
  hs.message = string.format("%d matching offers; %s", st.matchingOffers or 0, searched.message or "")
else
  hs.status = "Degraded"
  hs.message = searched.message or searched.reason
end
return hs
