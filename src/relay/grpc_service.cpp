#include "grpc_service.hpp"

namespace sluice::relay {

// The generated service's handlers decode requests before the reactor sees them; these take the
// same methods (indices in relay.proto's order) with the request left as bytes. gRPC's handler
// templates take any request and response types; only the request type differs from the
// generated ones.
GrpcService::GrpcService(RelayCore& core) : core_(core) {
  capture_protobuf_log();  // before any call can decode
  MarkMethodCallback(0, new grpc::internal::CallbackBidiHandler<grpc::ByteBuffer, v1::PublishEvent>(
                            [this](grpc::CallbackServerContext* ctx) { return publish(ctx); }));
  MarkMethodCallback(
      1, new grpc::internal::CallbackServerStreamingHandler<grpc::ByteBuffer, v1::SubscribeEvent>(
             [this](grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req) {
               return subscribe(ctx, req);
             }));
  MarkMethodCallback(3, new grpc::internal::CallbackBidiHandler<grpc::ByteBuffer, v1::WorkEvent>(
                            [this](grpc::CallbackServerContext* ctx) { return work(ctx); }));
}

}  // namespace sluice::relay
