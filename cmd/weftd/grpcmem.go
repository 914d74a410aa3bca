package main

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// lowMemoryDialOptions keep gRPC from holding on to megabytes weftd needs
// only for a moment. gRPC pools the buffers it reads responses into, in size
// classes that jump from 32 kB to 1 MB, and decodes every message from a
// buffer of the class above its size. A node reads big responses only at
// start-up, after an outage and in bursts (a watch response of 1,000 events
// is about 200 kB, the listing of 4,000 leases a megabyte), so the pool
// mostly keeps a 1 MB buffer alive for the next one. Without the pool those
// buffers are plain allocations, of their own size, that the collector
// frees. Requests and responses are not otherwise changed: the codec is
// protobuf, as gRPC's own.
func lowMemoryDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		experimental.WithBufferPool(mem.NopBufferPool{}),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(plainProto{})),
	}
}

// plainProto is the protobuf codec without buffer pooling.
type plainProto struct{}

var _ encoding.CodecV2 = plainProto{}

func (plainProto) Name() string { return "proto" }

func (plainProto) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("proto: cannot marshal %T: not a proto.Message", v)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (plainProto) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("proto: cannot unmarshal into %T: not a proto.Message", v)
	}
	return proto.Unmarshal(data.Materialize(), m)
}
