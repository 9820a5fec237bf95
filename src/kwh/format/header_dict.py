"""The preset dictionary of header codec 2: zstd with these bytes as raw-content dictionary.

A .kwh header is a few hundred JSON fields whose keys and common values ("padding_mode":
"zeros", "frac_bits", "encoding":"arith", ...) are the same in every file; a small model's
header compresses to a third less when zstd may refer to them from the start. These bytes are
part of the file format: changing one byte makes every file written with header codec 2
unreadable, so a new dictionary needs a new header codec number. docs/format.md gives their
SHA-256, checked by the test suite.

The fragments are written as a header serialises (sorted keys, no spaces); the most frequent
come last, where zstd's offsets to them are shortest.
"""

from __future__ import annotations

import hashlib

__all__ = ["HEADER_DICTIONARY", "HEADER_DICTIONARY_SHA256"]

_FRAGMENTS = (
    # the state layout (tensors named by their state_dict keys)
    '{"layout":"state","model_class":"Net","producer":"kwh 0.1.0","sections":[{"codec":"zstd",'
    '"stored_bytes":120,"tensors":[{"encoding":"float32","name":"features.0.weight","quant":'
    'null,"shape":[16]},{"encoding":"int64","name":"features.1.num_batches_tracked","quant":'
    'null,"shape":[]},{"encoding":"float32","name":"features.1.running_mean","quant":null,'
    '"shape":[16]},{"encoding":"float32","name":"features.1.running_var","quant":null,'
    '"shape":[16]}]}',
    # transformer pieces
    '{"args":{"dim":64,"tokens":16},"op":"PositionEmbedding","quant":null,"section":{"codec":'
    '"zstd","stored_bytes":3835,"tensors":[{"encoding":"float32"}]}}',
    '{"args":{"bias":true,"elementwise_affine":true,"eps":1e-05,"normalized_shape":[64]},'
    '"inputs":[3],"op":"LayerNorm","quant":null,"section":{"codec":"raw","tensors":[{'
    '"encoding":"float32"},{"encoding":"float32"}]}}',
    '{"args":{"approximate":"none"},"op":"GELU","quant":null,"section":null}',
    '{"args":{"dim":-1},"op":"Softmax","quant":null,"section":null}',
    '{"args":{"shape":[16,4,16]},"op":"reshape","quant":null,"section":null}',
    '{"args":{"dims":[0,2,1,3]},"op":"permute","quant":null,"section":null}',
    '{"args":{"value":0.25},"op":"mul_scalar","quant":null,"section":null}',
    '{"args":{},"inputs":[8,9],"op":"matmul","quant":null,"section":null}',
    '{"args":{"dim":1},"inputs":[8,9],"op":"cat","quant":null,"section":null}',
    '{"args":{"dim":[1],"keepdim":false},"op":"mean","quant":null,"section":null}',
    '{"args":{"dims":[1,2]},"op":"transpose","quant":null,"section":null}',
    # convolutional nets
    '{"args":{"affine":true,"eps":1e-05,"momentum":0.1,"num_batches_tracked":null,'
    '"num_features":16,"track_running_stats":true},"op":"BatchNorm2d","quant":null,'
    '"section":{"codec":"raw","tensors":[{"encoding":"float32"},{"encoding":"float32"},'
    '{"encoding":"float32"},{"encoding":"float32"}]}}',
    '{"args":{"ceil_mode":false,"dilation":[1,1],"kernel_size":[2,2],"padding":[0,0],'
    '"stride":[2,2]},"quant":null,"section":null,"type":"MaxPool2d"},{"args":{"end_dim":-1,'
    '"start_dim":1},"quant":null,"section":null,"type":"Flatten"}',
    '{"args":{"output_size":[1,1]},"op":"AdaptiveAvgPool2d","quant":null,"section":null},'
    '{"args":{"end_dim":-1,"start_dim":1},"op":"flatten","quant":null,"section":null}',
    # the chain layout
    '{"input_shape":[1,28,28],"modules":[{"args":{"bias":true,"dilation":[1,1],"groups":1,'
    '"in_channels":1,"kernel_size":[5,5],"out_channels":20,"padding":[0,0],"padding_mode":'
    '"zeros","stride":[1,1]},"quant":{"bits":7,"frac_bits":5},"section":{"codec":"raw",'
    '"tensors":[{"encoding":"bitmap","nnz":138},{"encoding":"float32"}]},"type":"Conv2d"},'
    '{"args":{},"quant":null,"section":null,"type":"ReLU"},{"args":{"bias":true,'
    '"in_features":300,"out_features":100},"quant":{"bits":5,"frac_bits":2},"section":{'
    '"codec":"raw","tensors":[{"encoding":"rindex","entries":596,"index_bits":7,"nnz":575},'
    '{"bits":13,"encoding":"fixed","frac_bits":12}]},"type":"Linear"}],"producer":'
    '"kwh 0.1.0","summary":null}',
    # the graph layout, most frequent last
    '{"input_normalization":{"mean":[0.1307],"std":[0.3081]},"input_shape":[1,28,28],'
    '"layout":"graph","nodes":[{"args":{"bias":true,"dilation":[1,1],"groups":1,'
    '"in_channels":1,"kernel_size":[3,3],"out_channels":8,"padding":[1,1],"padding_mode":'
    '"zeros","stride":[1,1]},"op":"Conv2d","quant":{"bits":7,"frac_bits":5},"section":{'
    '"codec":"raw","tensors":[{"encoding":"bitmap","nnz":53},{"bits":9,"encoding":"fixed",'
    '"frac_bits":9}]}},{"args":{},"op":"ReLU","quant":null,"section":null}',
    '{"args":{"bias":true,"in_features":64,"out_features":10},"op":"Linear","quant":{"bits":6,'
    '"frac_bits":5},"section":{"codec":"raw","tensors":[{"bytes":120,"encoding":"arith",'
    '"nnz":300},{"bits":9,"bytes":9,"encoding":"fixed-arith","frac_bits":8,"nnz":10}]}}],'
    '"output":63,"producer":"kwh 0.1.0","summary":null}',
    '{"args":{},"inputs":[1],"op":"Identity","quant":null,"section":null},{"args":{},'
    '"inputs":[4,5],"op":"add","quant":null,"section":null},{"args":{},"op":"ReLU","quant":'
    'null,"section":null},',
    '{"args":{"bias":true,"dilation":[1,1],"groups":1,"in_channels":16,"kernel_size":[3,3],'
    '"out_channels":16,"padding":[1,1],"padding_mode":"zeros","stride":[1,1]},"op":"Conv2d",'
    '"quant":{"bits":6,"frac_bits":4},"section":{"codec":"raw","tensors":[{"bytes":94,'
    '"encoding":"arith","nnz":79},{"bits":9,"encoding":"fixed","frac_bits":7}]}},{"args":{},'
    '"op":"ReLU","quant":null,"section":null},',
)

HEADER_DICTIONARY = "".join(_FRAGMENTS).encode("ascii")
HEADER_DICTIONARY_SHA256 = hashlib.sha256(HEADER_DICTIONARY).hexdigest()
