using System.Collections.Immutable;
using System.Reflection;
using System.Reflection.Emit;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;

namespace PinnedDma.Tests.Architecture;

/// <summary>One type named by compiled code: the source file of the code that names it, and the named type's full name.</summary>
internal readonly record struct TypeUse(string SourceFile, string Member, string NamedType);

/// <summary>
/// Reads, from a compiled assembly and its portable PDB, every type that each source file's code names: in method
/// signatures, locals and IL (types, fields and methods used, generic instantiations), and in its types' base types,
/// interfaces, fields, properties, generic constraints and attributes. The source file of a method is the PDB's
/// document for it; a type's own declarations are attributed to the files of its methods.
/// </summary>
internal static class AssemblyReferenceReader
{
    private static readonly Dictionary<short, OpCode> s_opCodes = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value);

    public static List<TypeUse> Read(string assemblyPath)
    {
        string pdbPath = Path.ChangeExtension(assemblyPath, ".pdb");
        if (!File.Exists(pdbPath)) throw new FileNotFoundException("The layering check needs the portable PDB next to the assembly.", pdbPath);
        using var pe = new PEReader(File.OpenRead(assemblyPath));
        using var pdbProvider = MetadataReaderProvider.FromPortablePdbStream(File.OpenRead(pdbPath));
        var md = pe.GetMetadataReader();
        var pdb = pdbProvider.GetMetadataReader();
        var names = new NameProvider();
        var uses = new List<TypeUse>();

        foreach (var typeHandle in md.TypeDefinitions)
        {
            var type = md.GetTypeDefinition(typeHandle);
            string typeName = NameProvider.FullName(md, typeHandle);
            var typeFiles = new HashSet<string>();
            foreach (var methodHandle in type.GetMethods())
            {
                var method = md.GetMethodDefinition(methodHandle);
                string member = $"{typeName}.{md.GetString(method.Name)}";
                var files = SourceFiles(pdb, methodHandle);
                typeFiles.UnionWith(files);
                var named = new HashSet<string>();
                named.UnionWith(Flatten(method.DecodeSignature(names, null)));
                AddAttributes(md, names, method.GetCustomAttributes(), named);
                foreach (var p in method.GetGenericParameters()) AddConstraints(md, names, p, named);
                if (method.RelativeVirtualAddress != 0)
                {
                    var body = pe.GetMethodBody(method.RelativeVirtualAddress);
                    if (!body.LocalSignature.IsNil)
                        foreach (var local in md.GetStandaloneSignature(body.LocalSignature).DecodeLocalSignature(names, null)) named.UnionWith(local);
                    foreach (var token in Tokens(body.GetILReader())) named.UnionWith(NamesOfToken(md, names, token));
                }
                foreach (var file in files)
                    foreach (var n in named) uses.Add(new TypeUse(file, member, n));
            }

            // The type's own declarations, attributed to the files its methods are in.
            var declared = new HashSet<string>();
            if (!type.BaseType.IsNil) declared.UnionWith(NamesOfHandle(md, names, type.BaseType));
            foreach (var i in type.GetInterfaceImplementations()) declared.UnionWith(NamesOfHandle(md, names, md.GetInterfaceImplementation(i).Interface));
            foreach (var f in type.GetFields())
            {
                var field = md.GetFieldDefinition(f);
                declared.UnionWith(field.DecodeSignature(names, null));
                AddAttributes(md, names, field.GetCustomAttributes(), declared);
            }
            foreach (var p in type.GetProperties())
            {
                var property = md.GetPropertyDefinition(p);
                declared.UnionWith(Flatten(property.DecodeSignature(names, null)));
                AddAttributes(md, names, property.GetCustomAttributes(), declared);
            }
            foreach (var p in type.GetGenericParameters()) AddConstraints(md, names, p, declared);
            AddAttributes(md, names, type.GetCustomAttributes(), declared);
            foreach (var file in typeFiles)
                foreach (var n in declared) uses.Add(new TypeUse(file, typeName, n));
        }
        return uses;
    }

    /// <summary>The source documents of a method's sequence points (none for code the compiler made up).</summary>
    private static HashSet<string> SourceFiles(MetadataReader pdb, MethodDefinitionHandle method)
    {
        var files = new HashSet<string>();
        var info = pdb.GetMethodDebugInformation(method.ToDebugInformationHandle());
        if (!info.Document.IsNil) files.Add(pdb.GetString(pdb.GetDocument(info.Document).Name));
        if (!info.SequencePointsBlob.IsNil)
            foreach (var sp in info.GetSequencePoints())
                if (!sp.Document.IsNil) files.Add(pdb.GetString(pdb.GetDocument(sp.Document).Name));
        return files;
    }

    /// <summary>The metadata tokens a method body's IL names (types, fields, methods, signatures).</summary>
    private static IEnumerable<int> Tokens(BlobReader il)
    {
        var tokens = new List<int>();
        while (il.RemainingBytes > 0)
        {
            short value = il.ReadByte();
            if (value == 0xFE) value = unchecked((short)(0xFE00 | il.ReadByte()));
            if (!s_opCodes.TryGetValue(value, out var op)) throw new InvalidDataException($"Unknown IL opcode 0x{value:x} at {il.Offset}.");
            switch (op.OperandType)
            {
                case OperandType.InlineNone:
                    break;
                case OperandType.ShortInlineBrTarget:
                case OperandType.ShortInlineI:
                case OperandType.ShortInlineVar:
                    il.Offset += 1;
                    break;
                case OperandType.InlineVar:
                    il.Offset += 2;
                    break;
                case OperandType.InlineI:
                case OperandType.InlineBrTarget:
                case OperandType.ShortInlineR:
                case OperandType.InlineString:
                    il.Offset += 4;
                    break;
                case OperandType.InlineI8:
                case OperandType.InlineR:
                    il.Offset += 8;
                    break;
                case OperandType.InlineSwitch:
                    int n = il.ReadInt32();
                    il.Offset += 4 * n;
                    break;
                case OperandType.InlineField:
                case OperandType.InlineMethod:
                case OperandType.InlineTok:
                case OperandType.InlineType:
                case OperandType.InlineSig:
                    tokens.Add(il.ReadInt32());
                    break;
                default:
                    throw new InvalidDataException($"Unhandled operand type {op.OperandType}.");
            }
        }
        return tokens;
    }

    private static IEnumerable<string> NamesOfToken(MetadataReader md, NameProvider names, int token) =>
        NamesOfHandle(md, names, MetadataTokens.EntityHandle(token));

    private static IEnumerable<string> NamesOfHandle(MetadataReader md, NameProvider names, EntityHandle handle)
    {
        switch (handle.Kind)
        {
            case HandleKind.TypeDefinition:
                return [NameProvider.FullName(md, (TypeDefinitionHandle)handle)];
            case HandleKind.TypeReference:
                return [NameProvider.FullName(md, (TypeReferenceHandle)handle)];
            case HandleKind.TypeSpecification:
                return md.GetTypeSpecification((TypeSpecificationHandle)handle).DecodeSignature(names, null);
            case HandleKind.FieldDefinition:
                {
                    var f = md.GetFieldDefinition((FieldDefinitionHandle)handle);
                    return [NameProvider.FullName(md, f.GetDeclaringType()), .. f.DecodeSignature(names, null)];
                }
            case HandleKind.MethodDefinition:
                {
                    var m = md.GetMethodDefinition((MethodDefinitionHandle)handle);
                    return [NameProvider.FullName(md, m.GetDeclaringType()), .. Flatten(m.DecodeSignature(names, null))];
                }
            case HandleKind.MemberReference:
                {
                    var m = md.GetMemberReference((MemberReferenceHandle)handle);
                    IEnumerable<string> parent = m.Parent.Kind is HandleKind.TypeDefinition or HandleKind.TypeReference or HandleKind.TypeSpecification or HandleKind.MethodDefinition
                        ? NamesOfHandle(md, names, (EntityHandle)m.Parent)
                        : [];
                    IEnumerable<string> signature = m.GetKind() == MemberReferenceKind.Field
                        ? m.DecodeFieldSignature(names, null)
                        : Flatten(m.DecodeMethodSignature(names, null));
                    return [.. parent, .. signature];
                }
            case HandleKind.MethodSpecification:
                {
                    var s = md.GetMethodSpecification((MethodSpecificationHandle)handle);
                    return [.. NamesOfHandle(md, names, s.Method), .. s.DecodeSignature(names, null).SelectMany(a => a)];
                }
            case HandleKind.StandaloneSignature:
                {
                    var s = md.GetStandaloneSignature((StandaloneSignatureHandle)handle);
                    return s.GetKind() == StandaloneSignatureKind.Method ? Flatten(s.DecodeMethodSignature(names, null)) : s.DecodeLocalSignature(names, null).SelectMany(a => a);
                }
            default:
                return [];
        }
    }

    private static void AddAttributes(MetadataReader md, NameProvider names, CustomAttributeHandleCollection attributes, HashSet<string> into)
    {
        foreach (var a in attributes) into.UnionWith(NamesOfHandle(md, names, md.GetCustomAttribute(a).Constructor));
    }

    private static void AddConstraints(MetadataReader md, NameProvider names, GenericParameterHandle p, HashSet<string> into)
    {
        foreach (var c in md.GetGenericParameter(p).GetConstraints()) into.UnionWith(NamesOfHandle(md, names, md.GetGenericParameterConstraint(c).Type));
    }

    private static IEnumerable<string> Flatten(MethodSignature<string[]> s) => s.ReturnType.Concat(s.ParameterTypes.SelectMany(p => p));

    /// <summary>Decodes a signature into the full names of every type it mentions.</summary>
    private sealed class NameProvider : ISignatureTypeProvider<string[], object?>
    {
        public static string FullName(MetadataReader md, TypeDefinitionHandle handle)
        {
            var t = md.GetTypeDefinition(handle);
            var declaring = t.GetDeclaringType();
            return declaring.IsNil ? Join(md.GetString(t.Namespace), md.GetString(t.Name)) : $"{FullName(md, declaring)}+{md.GetString(t.Name)}";
        }

        public static string FullName(MetadataReader md, TypeReferenceHandle handle)
        {
            var t = md.GetTypeReference(handle);
            return t.ResolutionScope.Kind == HandleKind.TypeReference
                ? $"{FullName(md, (TypeReferenceHandle)t.ResolutionScope)}+{md.GetString(t.Name)}"
                : Join(md.GetString(t.Namespace), md.GetString(t.Name));
        }

        private static string Join(string ns, string name) => ns.Length == 0 ? name : $"{ns}.{name}";

        public string[] GetPrimitiveType(PrimitiveTypeCode typeCode) => [];
        public string[] GetTypeFromDefinition(MetadataReader reader, TypeDefinitionHandle handle, byte rawTypeKind) => [FullName(reader, handle)];
        public string[] GetTypeFromReference(MetadataReader reader, TypeReferenceHandle handle, byte rawTypeKind) => [FullName(reader, handle)];
        public string[] GetTypeFromSpecification(MetadataReader reader, object? genericContext, TypeSpecificationHandle handle, byte rawTypeKind) =>
            reader.GetTypeSpecification(handle).DecodeSignature(this, genericContext);
        public string[] GetSZArrayType(string[] elementType) => elementType;
        public string[] GetArrayType(string[] elementType, ArrayShape shape) => elementType;
        public string[] GetPointerType(string[] elementType) => elementType;
        public string[] GetByReferenceType(string[] elementType) => elementType;
        public string[] GetPinnedType(string[] elementType) => elementType;
        public string[] GetGenericInstantiation(string[] genericType, ImmutableArray<string[]> typeArguments) => [.. genericType, .. typeArguments.SelectMany(a => a)];
        public string[] GetGenericMethodParameter(object? genericContext, int index) => [];
        public string[] GetGenericTypeParameter(object? genericContext, int index) => [];
        public string[] GetFunctionPointerType(MethodSignature<string[]> signature) => [.. Flatten(signature)];
        public string[] GetModifiedType(string[] modifier, string[] unmodifiedType, bool isRequired) => [.. unmodifiedType, .. modifier];
    }
}
