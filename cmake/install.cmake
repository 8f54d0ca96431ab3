# Installing Sluice: the core library and its headers (always), the relay's C++ client and the
# `sluice` executable with its systemd unit and default configuration (SLUICE_BUILD_RELAY); a
# CMake package (find_package(sluice [COMPONENTS client]) -> sluice::core, sluice::client),
# pkg-config files (sluice, sluice-client), and a Debian package by CPack (`make package`).
include(CMakePackageConfigHelpers)
set(SLUICE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/sluice)

install(TARGETS sluice EXPORT sluiceCoreTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/sluice DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        COMPONENT dev
        PATTERN "relay" EXCLUDE   # (the relay's own headers: it is a program, not a library)
        PATTERN "media" EXCLUDE)  # (`sluice ingest`'s: part of the program for now)
install(EXPORT sluiceCoreTargets NAMESPACE sluice:: DESTINATION ${SLUICE_CMAKE_DIR}
        COMPONENT dev)
configure_file(${PROJECT_SOURCE_DIR}/packaging/sluice.pc.in ${PROJECT_BINARY_DIR}/sluice.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/sluice.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
        COMPONENT dev)

if(SLUICE_BUILD_RELAY)
  # (static libraries: the client's consumers link its generated protobuf code too)
  install(TARGETS sluice_client sluice_proto EXPORT sluiceClientTargets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/sluice/relay
          DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/sluice COMPONENT dev
          FILES_MATCHING PATTERN "protocol.hpp")  # (the wire constants clients share)
  install(EXPORT sluiceClientTargets NAMESPACE sluice:: DESTINATION ${SLUICE_CMAKE_DIR}
          COMPONENT dev)
  configure_file(${PROJECT_SOURCE_DIR}/packaging/sluice-client.pc.in
                 ${PROJECT_BINARY_DIR}/sluice-client.pc @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/sluice-client.pc
          DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT dev)
  install(TARGETS sluice_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT relay)
  install(FILES ${PROJECT_SOURCE_DIR}/packaging/sluice.service
          DESTINATION lib/systemd/system COMPONENT relay)
  # (the .deb's postinst copies it to /etc/sluice/sluice.toml, the unit's configuration)
  install(FILES ${PROJECT_SOURCE_DIR}/packaging/sluice.toml
          DESTINATION ${CMAKE_INSTALL_DATADIR}/sluice COMPONENT relay)
  install(FILES ${PROJECT_SOURCE_DIR}/proto/sluice/v1/relay.proto
          DESTINATION ${CMAKE_INSTALL_DATADIR}/sluice/proto/sluice/v1 COMPONENT dev)
endif()
install(FILES ${PROJECT_SOURCE_DIR}/LICENSE ${PROJECT_SOURCE_DIR}/README.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT dev)

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/sluiceConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/sluiceConfig.cmake
                              INSTALL_DESTINATION ${SLUICE_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/sluiceConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/sluiceConfig.cmake
              ${PROJECT_BINARY_DIR}/sluiceConfigVersion.cmake
        DESTINATION ${SLUICE_CMAKE_DIR} COMPONENT dev)

# make package: one .deb with the executable, the unit, the configuration, the libraries and
# headers. Its dependencies come from dpkg-shlibdeps (the shared libraries the binary uses).
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME sluice)
set(CPACK_PACKAGE_VENDOR "Sluice")
set(CPACK_PACKAGE_CONTACT "Sluice maintainers <sluice@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "Real-time stream relay that keeps streams healthy under overload")
set(CPACK_RESOURCE_FILE_LICENSE ${PROJECT_SOURCE_DIR}/LICENSE)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# `sluice ingest` and the WebRTC viewers load GStreamer's plugins at run time (shlibdeps sees only
# the libraries): webrtcbin and DTLS/SRTP (bad), ICE (nice), the RTP payloaders (good).
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS
    "gstreamer1.0-plugins-base, gstreamer1.0-plugins-good, gstreamer1.0-plugins-bad, gstreamer1.0-nice")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${PROJECT_SOURCE_DIR}/packaging/postinst)
include(CPack)
