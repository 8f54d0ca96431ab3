// Where a webrtcbin's ICE gathers (relay-internal; also the WHEP benchmark's viewers): UDP only,
// no UPnP (libnice asks the router to open ports by default: not for a server), and only the
// given addresses (none: libnice's choice, every non-loopback interface). Before gathering.
#pragma once

#include <gst/gst.h>
#include <nice/agent.h>

#include <string>
#include <vector>

namespace sluice::relay {

inline void restrict_ice(GstElement* webrtc, const std::vector<std::string>& addresses) {
  GObject* ice = nullptr;
  g_object_get(webrtc, "ice-agent", &ice, nullptr);
  if (ice == nullptr) return;
  g_object_set(ice, "ice-tcp", FALSE, nullptr);
  NiceAgent* agent = nullptr;
  g_object_get(ice, "agent", &agent, nullptr);
  if (agent != nullptr) {
    g_object_set(agent, "upnp", FALSE, nullptr);
    for (const auto& a : addresses) {
      NiceAddress address;
      nice_address_init(&address);
      if (nice_address_set_from_string(&address, a.c_str()) != FALSE)
        nice_agent_add_local_address(agent, &address);
    }
    g_object_unref(agent);
  }
  g_object_unref(ice);
}

}  // namespace sluice::relay
