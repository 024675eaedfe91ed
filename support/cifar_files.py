"""Small CIFAR-10 look-alikes written in the official on-disk formats.

`write_batches` writes cifar-10-batches-py/ exactly as the official archive lays it out
(Python 2 pickles of dicts with a uint8 `data` array, built through
numpy.core.multiarray._reconstruct, and a `labels` list); `write_tarball` packs that folder
as cifar-10-python.tar.gz. The images are learnable: each class has its own colour, plus noise.
"""
import hashlib
import os
import struct
import tarfile

import numpy as np


def learnable_images(n, seed, noise_std=30):
    """n uint8 images N,32,32,3 with labels: a colour per class plus pixel noise (more noise, harder)."""
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(0).integers(40, 216, size=(10, 3))
    labels = rng.integers(0, 10, size=n)
    noise = rng.normal(0, noise_std, size=(n, 32, 32, 3))
    images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


# A writer for the original (Python 2, protocol 2) pickle layout of the official batches
def _str(b):
    b = b.encode('latin1') if isinstance(b, str) else b
    return (b'U' + bytes([len(b)]) + b) if len(b) < 256 else (b'T' + struct.pack('<I', len(b)) + b)


def _int(i):
    return b'K' + bytes([i]) if i < 256 else b'M' + struct.pack('<H', i) if i < 65536 else b'J' + struct.pack('<i', i)


def _list(items, encode):
    return b']' + b''.join(b'(' + b''.join(encode(x) for x in items[k:k + 1000]) + b'e'
                           for k in range(0, len(items), 1000))


def _uint8_matrix(a):
    return (b'cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n' + _int(0) + b'\x85' + _str('b') + b'\x87R'
            + b'(' + _int(1) + _int(a.shape[0]) + _int(a.shape[1]) + b'\x86'
            + b'cnumpy\ndtype\n' + _str('u1') + _int(0) + _int(1) + b'\x87R'
            + b'(' + _int(3) + _str('|') + b'NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff' + _int(0) + b'tb'
            + b'\x89' + _str(np.ascontiguousarray(a, dtype=np.uint8).tobytes()) + b'tb')


def batch_pickle(images, labels, batch_label):
    """Bytes of one official batch file for images N,32,32,3 uint8 and labels N."""
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # rows of R(1024) G(1024) B(1024)
    entries = [('batch_label', _str(batch_label)), ('labels', _list([int(y) for y in labels], _int)),
               ('data', _uint8_matrix(flat)), ('filenames', _list(['img_%d.png' % i for i in range(len(labels))], _str))]
    return b'\x80\x02}(' + b''.join(_str(k) + v for k, v in entries) + b'u.'


def write_batches(data_dir, n_train=1280, n_test=500, seed=1, noise_std=30):
    """data_dir/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}; returns the folder."""
    return write_images(data_dir, learnable_images(n_train, seed, noise_std),
                        learnable_images(n_test, seed + 1, noise_std))


def write_images(data_dir, train, test):
    """write_batches' files of `train` and `test`, each (uint8 images N,32,32,3, labels N); returns the folder."""
    folder = os.path.join(data_dir, 'cifar-10-batches-py')
    os.makedirs(folder, exist_ok=True)
    images, labels = train
    for k, index in enumerate(np.array_split(np.arange(len(labels)), 5)):
        with open(os.path.join(folder, 'data_batch_%d' % (k + 1)), 'wb') as f:
            f.write(batch_pickle(images[index], labels[index], 'training batch %d of 5' % (k + 1)))
    images, labels = test
    with open(os.path.join(folder, 'test_batch'), 'wb') as f:
        f.write(batch_pickle(images, labels, 'testing batch 1 of 1'))
    with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
        f.write(b'\x80\x02}(' + _str('label_names') + _list(['class%d' % i for i in range(10)], _str) + b'u.')
    return folder


def write_tarball(data_dir, folder):
    """data_dir/cifar-10-python.tar.gz holding `folder` as cifar-10-batches-py/; returns (path, md5)."""
    path = os.path.join(data_dir, 'cifar-10-python.tar.gz')
    with tarfile.open(path, 'w:gz') as tar:
        tar.add(folder, arcname='cifar-10-batches-py')
    return path, hashlib.md5(open(path, 'rb').read()).hexdigest()
