/** Domain XML fixtures shaped like libvirt 9 `virsh dumpxml` output. */
export const LIVE_XML = `<domain type='kvm' id='7'>
  <name>web &apos;1&apos; &quot;$(id)&quot;</name>
  <uuid>6A1B6F4C-0F7E-4D3A-9C55-1D2B3C4D5E6F</uuid>
  <metadata><app:x xmlns:app="http://example.com/app">keep me</app:x></metadata>
  <memory unit='KiB'>65536</memory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/libvirt/images/web 1.qcow2.vs-ovl-abc' index='3'/>
      <backingStore type='file' index='2'>
        <format type='qcow2'/>
        <source file='/var/lib/libvirt/images/web 1.qcow2'/>
        <backingStore type='file' index='1'>
          <format type='raw'/>
          <source file='/var/lib/libvirt/images/template.raw'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <serial>disk-serial-1</serial>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/web-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <auth username='libvirt'>
        <secret type='ceph' uuid='11111111-2222-3333-4444-555555555555'/>
      </auth>
      <source protocol='rbd' name='rbdpool/ns1/web-root'>
        <host name='10.0.0.1' port='6789'/>
        <host name='10.0.0.2'/>
      </source>
      <target dev='sda' bus='scsi'/>
      <shareable/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='vmdk'/>
      <source file='/var/lib/libvirt/images/old.vmdk'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
`;

export const MINIMAL_XML = `<domain type='qemu'><name>m</name><uuid>00000000-0000-0000-0000-000000000001</uuid></domain>`;
