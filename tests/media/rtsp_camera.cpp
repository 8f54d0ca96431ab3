// A stand-in RTSP camera for the ingest tests: gst-rtsp-server serving a moving test pattern,
// H.264 (openh264, a keyframe every `fps` frames) or VP8, at rtsp://127.0.0.1:PORT/cam.
//   rtsp_camera PORT [h264|vp8] [FPS]
// Prints "ready" once it listens; serves until SIGTERM or SIGINT.
#include <glib-unix.h>
#include <gst/gst.h>
#include <gst/rtsp-server/rtsp-server.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {
GMainLoop* loop = nullptr;
gboolean quit(gpointer /*unused*/) {
  g_main_loop_quit(loop);
  return G_SOURCE_REMOVE;
}
}  // namespace

int main(int argc, char** argv) {
  gst_init(nullptr, nullptr);
  if (argc < 2) {
    std::fprintf(stderr, "usage: rtsp_camera PORT [h264|vp8] [FPS]\n");
    return 2;
  }
  const std::string codec = argc > 2 ? argv[2] : "h264";
  const std::string fps = argc > 3 ? argv[3] : "30";
  const std::string enc =
      codec == "vp8"
          ? "vp8enc deadline=1 cpu-used=8 keyframe-max-dist=" + fps + " ! rtpvp8pay name=pay0 pt=96"
          : "openh264enc gop-size=" + fps +
                " ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1";
  const std::string launch =
      "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=" +
      fps + "/1 ! videoconvert ! " + enc + " )";
  GstRTSPServer* server = gst_rtsp_server_new();
  gst_rtsp_server_set_address(server, "127.0.0.1");
  gst_rtsp_server_set_service(server, argv[1]);
  GstRTSPMediaFactory* factory = gst_rtsp_media_factory_new();
  gst_rtsp_media_factory_set_launch(factory, launch.c_str());
  gst_rtsp_media_factory_set_shared(factory, TRUE);
  GstRTSPMountPoints* mounts = gst_rtsp_server_get_mount_points(server);
  gst_rtsp_mount_points_add_factory(mounts, "/cam", factory);
  g_object_unref(mounts);
  if (gst_rtsp_server_attach(server, nullptr) == 0) {
    std::fprintf(stderr, "rtsp_camera: cannot listen on 127.0.0.1:%s\n", argv[1]);
    return 1;
  }
  loop = g_main_loop_new(nullptr, FALSE);
  g_unix_signal_add(SIGTERM, quit, nullptr);
  g_unix_signal_add(SIGINT, quit, nullptr);
  std::printf("ready\n");
  std::fflush(stdout);
  g_main_loop_run(loop);
  g_object_unref(server);
  return 0;
}
