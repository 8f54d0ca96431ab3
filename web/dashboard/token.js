// The relay's token for its pages (the dashboard, the viewer page): #token=... in the page's
// address, or typed into `input`; kept for this tab (sessionStorage). `onChange` runs when the
// user types another.
export function pageToken(input, onChange) {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) sessionStorage.setItem("sluice.token", fromHash);
  input.value = sessionStorage.getItem("sluice.token") || "";
  input.addEventListener("change", () => {
    sessionStorage.setItem("sluice.token", input.value);
    onChange();
  });
}
